//! What a CONNECT tunnel's first flight says about where it is going: the SNI of a TLS ClientHello, or the Host of a plain HTTP request, held to the CONNECT target.

/// The most of a tunnel's first flight the door reads before deciding: one TLS record.
pub const FIRST_FLIGHT_MAX: usize = 16 * 1024 + 5;

/// Whether `buf` holds enough of a first flight to decide on: a whole TLS record, a whole
/// HTTP head, or anything else at all (an unknown protocol is not looked into).
pub fn complete(buf: &[u8]) -> bool {
    if buf.len() >= FIRST_FLIGHT_MAX {
        return true;
    }
    match buf.first() {
        None => false,
        Some(0x16) => buf.len() >= 5 && buf.len() >= 5 + record_len(buf),
        Some(b) if b.is_ascii_uppercase() => buf.windows(4).any(|w| w == b"\r\n\r\n"),
        Some(_) => true,
    }
}

fn record_len(buf: &[u8]) -> usize {
    u16::from_be_bytes([buf[3], buf[4]]) as usize
}

/// Why a tunnel's first flight does not go where its CONNECT said, or `None` when it does
/// or cannot be told (not TLS or HTTP, no SNI, a ClientHello spread over records).
pub fn mismatch(first: &[u8], host: &str, port: u16) -> Option<String> {
    let host = normal(host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if first.first() == Some(&0x16) {
        let sni = client_hello_sni(first)?;
        return (normal(&sni) != host)
            .then(|| format!("the TLS server name ({sni}) does not match the target"));
    }
    let head = std::str::from_utf8(first).ok()?;
    let (head, _) = head.split_once("\r\n\r\n")?;
    let mut hosts = head.lines().skip(1).filter_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim())
    });
    let value = hosts.next()?;
    if hosts.next().is_some() {
        return Some("more than one Host header inside the tunnel".into());
    }
    let (h, p) = match value.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => (value, None),
        },
        None => match value.rsplit_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (value, None),
        },
    };
    let port_ok = p.is_none_or(|p| p.parse::<u16>() == Ok(port));
    (normal(h) != host || !port_ok)
        .then(|| format!("the Host header inside the tunnel ({value}) does not match the target"))
}

fn normal(name: &str) -> String {
    let lc = name.to_ascii_lowercase();
    lc.strip_suffix('.').unwrap_or(&lc).to_string()
}

/// The host name a TLS ClientHello asks for (its `server_name` extension), when the
/// whole hello is in the first record.
fn client_hello_sni(rec: &[u8]) -> Option<String> {
    let body = rec.get(5..5 + record_len(rec))?;
    if *body.first()? != 0x01 {
        return None;
    }
    let mut r = Reader(body.get(4..)?);
    r.take(2 + 32)?; // version, random
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len)?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let data = exts.take(len as usize)?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(data);
        let list = names.u16()? as usize;
        let mut list = Reader(names.take(list)?);
        while let (Some(name_type), Some(len)) = (list.u8(), list.u16()) {
            let name = list.take(len as usize)?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_string);
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with one server name.
    fn hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut sni_ext = Vec::new();
        sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut exts = Vec::new();
        // An unrelated extension first (supported_versions), then server_name.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni_ext);
        let mut hello = vec![0x03, 0x03];
        hello.extend_from_slice(&[7; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        hello.extend_from_slice(&[0x01, 0x00]);
        hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hello.extend_from_slice(&exts);
        let mut hs = vec![0x01, 0x00];
        hs.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        hs.extend_from_slice(&hello);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_server_name_must_be_the_connect_target() {
        let h = hello("pypi.org");
        assert!(complete(&h));
        assert!(!complete(&h[..h.len() - 1]));
        assert_eq!(client_hello_sni(&h).as_deref(), Some("pypi.org"));
        assert_eq!(mismatch(&h, "PyPI.org.", 443), None);
        let e = mismatch(&hello("evil.test"), "pypi.org", 443).unwrap();
        assert!(e.contains("evil.test"), "{e}");
        // Truncated or odd hellos say nothing (the tunnel is not looked into further).
        assert_eq!(mismatch(&h[..20], "x.org", 443), None);
    }

    #[test]
    fn a_plain_request_in_a_tunnel_names_the_same_host() {
        let ok = b"GET / HTTP/1.1\r\nHost: up.test:8080\r\n\r\n";
        assert!(complete(ok));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: up"));
        assert_eq!(mismatch(ok, "up.test", 8080), None);
        assert!(mismatch(ok, "up.test", 9090).is_some());
        assert!(mismatch(b"GET / HTTP/1.1\r\nhost: evil.test\r\n\r\n", "up.test", 80).is_some());
        assert!(mismatch(
            b"GET / HTTP/1.1\r\nHost: up.test\r\nHost: evil.test\r\n\r\n",
            "up.test",
            80
        )
        .is_some());
        assert_eq!(mismatch(b"\x00binary", "up.test", 80), None);
    }
}
