// nginx (njs) routing of nsbox session requests by the JSON body. See deploy/nginx.conf and
// docs/operating.md, "Sessions behind a load balancer".
//
// A session lives on the node its id names (sess_<node>_<32 hex>). For POST /v1/tools/code
// and /mcp the id is in the body, which stock nginx cannot read before it picks an upstream
// ($request_body is empty while proxy_pass is evaluated). js_content reads the body first,
// takes the node from the x-nsbox-session header or `session_id` (on /mcp, in the
// arguments of a tools/call), sets $nsbox_session_node, and redirects to @nsbox_session,
// which proxies the request, body included, to that node.

const SESSION_ID = /^sess_([a-z0-9-]{1,32})_[0-9a-f]{32}$/;

function sessionId(r) {
    const header = r.headersIn['x-nsbox-session'];
    if (header) {
        return header;
    }
    if (r.method !== 'POST') {
        return undefined;
    }
    let body;
    try {
        // Throws for a body over client_body_buffer_size, which nginx wrote to a
        // temporary file: such a request is balanced like any other, and a node that does
        // not hold the session answers 421 naming the one that does.
        body = JSON.parse(r.requestText);
    } catch (e) {
        return undefined; // and nsbox answers a body that is not JSON itself
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        return undefined;
    }
    if (r.uri === '/mcp') {
        const params = body.params;
        return body.method === 'tools/call' && params && params.arguments
            ? params.arguments.session_id
            : undefined;
    }
    return body.session_id;
}

function route(r) {
    const id = sessionId(r);
    const m = typeof id === 'string' ? SESSION_ID.exec(id) : null;
    r.variables.nsbox_session_node = m ? m[1] : '';
    r.internalRedirect('@nsbox_session');
}

export default { route };
