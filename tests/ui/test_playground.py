"""The playground and status page in a real browser (Debian's chromium) against real servers."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from playwright.sync_api import Page, expect

from conftest import KEY, OPERATOR_KEY, shoot


def run(page: Page, code: str) -> None:
    """Types `code` into the editor and runs it with Ctrl+Enter; returns at once."""
    # The shortcut is ignored while a run is still under way; the previous run's end
    # enables Run again a moment after its cell shows the verdict.
    expect(page.locator("#run")).to_be_enabled()
    page.fill("#code", code)
    page.focus("#code")
    page.keyboard.press("Control+Enter")


def last_cell(page: Page):
    return page.locator(".cell").last


def wait_done(page: Page, timeout: float = 30_000):
    cell = last_cell(page)
    expect(cell).to_have_class(re.compile(r"\b(ok|failed)\b"), timeout=timeout)
    return cell


def frame_of(page: Page, index: int = 0):
    """The page's result frame `index`, once it has drawn something."""
    handle = page.locator("iframe.result-frame").nth(index).element_handle()
    frame = handle.content_frame()
    assert frame is not None
    return frame


def open_session(page: Page, url: str) -> str:
    """Opens the playground at `url`, starts a session and returns its id."""
    page.goto(url + "/")
    page.click("#new-session")
    expect(page.locator("#session-info")).to_contain_text("idle TTL 600 s")
    expect(page.locator("#files-panel")).to_be_visible()
    return page.locator("#session-info").inner_text().split()[1]


def hold_first(page: Page, pattern: str, method: str = "GET") -> list:
    """Holds back the first request of `method` to a URL matching `pattern` (the others go
    on); returns the list that gets its route, for `answer_late`."""
    held = []

    def handler(route) -> None:
        # Decided before anything that could yield: the handler may be entered again
        # while an earlier call is still under way.
        if route.request.method == method and not held:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(pattern), handler)
    return held


def answer_late(page: Page, route, body: str | bytes) -> None:
    """Answers a request the test held back with `body`, and returns once the page has
    handled it (the request done, then two turns of the page's event loop)."""
    with page.expect_request_finished(lambda r: r.url == route.request.url and r.method == route.request.method):
        route.fulfill(status=200, content_type="application/json", body=body)
    page.evaluate("() => new Promise((r) => setTimeout(() => setTimeout(r, 0), 0))")


def test_basic_code_shows_4(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "print(2 + 2)")
    cell = wait_done(page)
    expect(cell.locator(".stream")).to_have_text("4\n")
    expect(cell).to_have_class(re.compile(r"\bok\b"))
    shoot(page, "basic")
    # Ctrl+Enter runs from outside the editor too (here: "New session" focused).
    page.focus("#new-session")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".cell-title")).to_have_text("Run 2")


def test_a_sleeping_loop_streams_its_first_line_before_the_end(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(2)\n")
    cell = last_cell(page)
    # The first line is there while the run still runs: no verdict, Run still disabled,
    # the last line not yet written. One snapshot of all four, taken as the line appears.
    page.wait_for_function(
        """() => {
            const cell = [...document.querySelectorAll('.cell')].pop();
            const text = (cell && cell.querySelector('.stream') || {}).textContent || '';
            return text.includes('tick 0') && !text.includes('tick 3')
                && !cell.classList.contains('ok') && document.getElementById('run').disabled;
        }""",
        timeout=30_000,
    )
    shoot(page, "streaming")
    wait_done(page)
    expect(cell.locator(".stream")).to_contain_text("tick 3")


def test_a_plot_image_appears(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2], label='up')\nplt.title('a line')\nplt.show()\n")
    cell = wait_done(page)
    img = cell.locator("img.plot")
    expect(img).to_have_count(1)
    # A data: image decodes asynchronously; its width is read once it has.
    width = img.evaluate("i => i.decode().then(() => i.naturalWidth, () => 0)")
    assert width > 100, width
    assert "line" in (img.get_attribute("alt") or "")
    shoot(page, "plot")


SHOWCASE = """import matplotlib.pyplot as plt
import pandas as pd
df = pd.DataFrame({"month": ["Jan", "Feb", "Mar", "Apr"], "runs": [120, 340, 290, 410]})
print("total runs:", df["runs"].sum())
df.plot.bar(x="month", y="runs", title="Runs per month", legend=False, figsize=(5, 2.6))
plt.tight_layout()
plt.show()
df.describe()
"""


def test_one_run_shows_text_a_figure_and_a_table(page: Page, keyless: str) -> None:
    """The README's picture: output, a figure and a DataFrame from one run."""
    page.goto(keyless + "/")
    run(page, SHOWCASE)
    cell = wait_done(page)
    expect(cell.locator(".stream")).to_have_text("total runs: 1160\n")
    expect(cell.locator("img.plot")).to_have_count(1)
    frame = frame_of(page)
    frame.wait_for_selector("table")
    assert frame.locator("tbody tr th").first.inner_text() == "count"
    page.wait_for_timeout(300)
    shoot(page, "playground")


def test_a_dataframe_renders_as_a_table_in_its_frame(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3.5, 19.25]})\n")
    wait_done(page)
    frame = frame_of(page)
    frame.wait_for_selector("table")
    cells = frame.locator("table tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('th, td')].map(c => c.textContent.trim()))"
    )
    assert cells == [["0", "Oslo", "3.50"], ["1", "Lima", "19.25"]], cells
    # Sandboxed: scripts, and no same-origin.
    assert page.locator("iframe.result-frame").first.get_attribute("sandbox") == "allow-scripts"
    shoot(page, "dataframe")


def test_a_plotly_result_renders_an_svg_in_its_frame(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "import plotly.express as px\npx.bar(x=['a', 'b', 'c'], y=[3, 1, 2], title='bars')\n")
    wait_done(page)
    frame = frame_of(page)
    # Plotly draws the figure's parts in steps after its svg exists.
    expect(frame.locator(".point path")).to_have_count(3)
    shoot(page, "plotly")


HOSTILE = r'''
from IPython.display import HTML, display
display(HTML("""<p id="out">waiting</p><script>
const got = [];
try { got.push("parent:" + parent.document.title); } catch (e) { got.push("parent:blocked"); }
try { got.push("local:" + localStorage.length); } catch (e) { got.push("local:blocked"); }
try { got.push("session:" + sessionStorage.getItem("nsbox.apiKey")); } catch (e) { got.push("session:blocked"); }
try { got.push("cookie:" + document.cookie); } catch (e) { got.push("cookie:blocked"); }
fetch("/v1/status", {headers: {"Authorization": "Bearer KEY"}})
  .then(r => r.text().then(t => "fetch:" + r.status + ":" + t.slice(0, 40)))
  .catch(() => "fetch:blocked")
  .then(f => { got.push(f); document.getElementById("out").textContent = "ran " + got.join(" "); });
</script>"""))
'''


def test_an_html_results_script_gets_nothing(page: Page, keyed: str) -> None:
    page.goto(keyed + "/")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    expect(page.locator("#play")).to_be_visible()
    page.evaluate("localStorage.setItem('secret', 'x')")
    run(page, HOSTILE.replace("KEY", KEY))
    wait_done(page)
    frame = frame_of(page)
    out = frame.locator("#out")
    expect(out).to_contain_text("ran ", timeout=15_000)
    text = out.inner_text()
    # The script ran, and every one of its tries failed.
    assert text == "ran parent:blocked local:blocked session:blocked cookie:blocked fetch:blocked", text
    shoot(page, "hostile-html")


def test_a_violation_is_shown_against_its_line(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "x = 1\nimport subprocess\nsubprocess.run(['ls'])\n")
    cell = wait_done(page)
    expect(cell.locator(".violations")).to_contain_text("Subprocess management")
    marked = cell.locator(".cell-code .violation-line")
    expect(marked.first).to_be_visible()
    lines = marked.evaluate_all("rows => rows.map(r => r.dataset.line)")
    assert "3" in lines and "1" not in lines, lines
    shoot(page, "violation")


def test_a_limit_that_ended_a_run_is_named(page: Page, keyed: str) -> None:
    page.goto(keyed + "/")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    run(page, "while True:\n    pass\n")
    cell = wait_done(page)
    expect(cell.locator(".limit")).to_have_text("Stopped by a limit: Execution timeout exceeded")


def test_a_two_cell_session_keeps_df_and_files_go_both_ways(page: Page, keyless: str, tmp_path) -> None:
    session_id = open_session(page, keyless)
    # Upload by dropping a file on the drop zone, as a person would.
    page.locator("#drop").dispatch_event(
        "drop",
        {
            "dataTransfer": page.evaluate_handle(
                """() => { const d = new DataTransfer();
                   d.items.add(new File(["name,n\\nada,3\\nbob,4\\n"], "people.csv", {type: "text/csv"}));
                   return d; }"""
            )
        },
    )
    expect(page.locator("#files")).to_contain_text("people.csv")
    run(page, "import pandas as pd\ndf = pd.read_csv('people.csv')\nprint(len(df))\n")
    first = wait_done(page)
    expect(first.locator(".stream")).to_have_text("2\n")
    run(page, "df['n2'] = df['n'] * 10\ndf.to_csv('out.csv', index=False)\nprint(df['n2'].sum())\n")
    second = wait_done(page)
    expect(page.locator(".cell")).to_have_count(2)
    expect(second.locator(".stream")).to_have_text("70\n")
    expect(page.locator("#files")).to_contain_text("out.csv")
    shoot(page, "session")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download out.csv").click()
    saved = tmp_path / "out.csv"
    info.value.save_as(saved)
    assert saved.read_text() == "name,n,n2\nada,3,30\nbob,4,40\n"
    page.click("#end-session")
    expect(page.locator("#session-info")).to_contain_text("ended")
    try:
        urllib.request.urlopen(f"{keyless}/v1/sessions/{session_id}")
        raise AssertionError("the session is still there")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_an_upload_waits_for_the_file_list_before_it_and_is_listed(page: Page, keyless: str) -> None:
    # The server refuses a second request in a session while one runs (409): the CI
    # failure this pins down was a dropped file's upload sent while the new session's file
    # list was still being answered. The list is held back here; the upload must wait for
    # it, not be refused, and the list drawn last must show the file.
    puts = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    held = hold_first(page, r"/v1/sessions/[^/]+/files$")
    open_session(page, keyless)
    page.set_input_files("#upload", files=[{"name": "late.csv", "mimeType": "text/csv", "buffer": b"a\n1\n"}])
    # Time for an upload sent at once to show; one that waits is not sent however long.
    page.evaluate("() => new Promise((r) => setTimeout(r, 300))")
    assert len(held) == 1, "the first listing was never asked for"
    assert puts == [], f"the upload did not wait for the file list in flight: {puts}"
    # Answered as the server would have answered it before the upload: no files.
    answer_late(page, held[0], '{"files": []}')
    expect(page.locator("#files")).to_contain_text("late.csv")
    assert len(puts) == 1, puts
    expect(page.locator("#session-info")).not_to_contain_text("failed")


def test_a_file_dropped_during_a_run_goes_in_after_it(page: Page, keyless: str) -> None:
    open_session(page, keyless)
    run(page, "import time\nprint('started', flush=True)\ntime.sleep(3)\nprint('done')\n")
    expect(last_cell(page).locator(".stream")).to_contain_text("started")
    page.set_input_files("#upload", files=[{"name": "during.txt", "mimeType": "text/plain", "buffer": b"x"}])
    cell = wait_done(page)
    expect(cell.locator(".stream")).to_have_text("started\ndone\n")
    expect(page.locator("#files")).to_contain_text("during.txt")
    expect(page.locator("#session-info")).not_to_contain_text("failed")
    run(page, "print(open('during.txt').read())")
    expect(wait_done(page).locator(".stream")).to_have_text("x\n")


def test_a_session_ended_while_its_state_is_asked_for_stays_ended(page: Page, keyless: str) -> None:
    # After a run the page asks for the session's state; that answer is held back while
    # the session is ended, then given as the server gave it before the end (active).
    # The page must not bring the ended session back.
    session_id = open_session(page, keyless)
    before_end = urllib.request.urlopen(f"{keyless}/v1/sessions/{session_id}").read()
    assert json.loads(before_end)["state"] == "active"
    held = hold_first(page, r"/v1/sessions/[^/]+$")
    run(page, "print(1)")
    expect(wait_done(page).locator(".stream")).to_have_text("1\n")
    expect(page.locator("#run")).to_be_enabled()
    assert len(held) == 1, "the page never asked for the session's state after the run"
    page.click("#end-session")
    expect(page.locator("#session-info")).to_contain_text("ended")
    answer_late(page, held[0], before_end)
    expect(page.locator("#session-info")).to_have_text(f"Session {session_id} ended.", timeout=1_000)
    expect(page.locator("#new-session")).to_be_visible()
    expect(page.locator("#files-panel")).to_be_hidden()


def test_keys_required_the_page_asks_and_a_wrong_one_is_refused(page: Page, keyed: str) -> None:
    page.goto(keyed + "/")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#play")).to_be_hidden()
    shoot(page, "key-asked")
    page.fill("#key-input", "not-the-key")
    page.click("#key-form button")
    expect(page.locator("#key-error")).to_have_text("invalid API key")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    expect(page.locator("#play")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('nsbox.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    run(page, "print(6 * 7)")
    expect(wait_done(page).locator(".stream")).to_have_text("42\n")


def test_the_status_page_shows_templates_and_the_chart(page: Page, keyless: str) -> None:
    templates = json.load(urllib.request.urlopen(keyless + "/v1/status"))["warm_templates"]
    assert templates, "the server has no warm templates to show"
    page.goto(keyless + "/")
    page.click("#tab-status")
    items = page.locator("#status-templates li")
    expect(items).to_have_count(len(templates))
    assert items.all_inner_texts() == templates
    expect(page.locator("#status-isolation")).to_contain_text("seccomp")
    expect(page.locator("#chart svg")).to_be_visible()
    shoot(page, "status")


def test_a_plain_key_sees_why_there_is_no_chart(page: Page, keyed: str) -> None:
    page.goto(keyed + "/")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.click("#tab-status")
    expect(page.locator("#chart-note")).to_contain_text("operator key")
    expect(page.locator("#status-load")).to_contain_text("this key's own runs")


def test_the_page_works_on_a_phone_screen(browser, keyless: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(keyless + "/")
    run(page, "print('small')")
    expect(wait_done(page).locator(".stream")).to_have_text("small\n")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    shoot(page, "phone")
    context.close()


def test_dark_theme_and_keyboard_only(browser, keyless: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    page = context.new_page()
    page.goto(keyless + "/")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(15, 18, 22)", bg
    # The playground is shown once /v1/status answers (it stays hidden behind the key panel
    # on a keyed server); until then the skip link has no visible editor to focus, so the
    # keys are pressed as a person would, once the editor is on screen.
    expect(page.locator("#code")).to_be_visible()
    # From the top of the page, Tab reaches the editor; Escape then Tab leaves it for Run...
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the skip link
    expect(page.locator("#code")).to_be_focused()
    page.keyboard.press("Control+a")
    page.keyboard.type("if True:")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # indents inside the editor
    page.keyboard.type("print('kb')")
    assert page.input_value("#code") == "if True:\n    print('kb')"
    # ...and Escape then Shift+Tab leaves it, back to the toolbar, whose Run runs it.
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "end-session" or page.evaluate(
        "document.activeElement.id"
    ) == "new-session", page.evaluate("document.activeElement.id")
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#run")).to_be_focused()
    page.keyboard.press("Enter")
    expect(wait_done(page).locator(".stream")).to_have_text("kb\n")
    shoot(page, "dark")
    context.close()


def test_headers_confine_the_page_and_the_frame(keyless: str) -> None:
    page = urllib.request.urlopen(keyless + "/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp, csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    frame = urllib.request.urlopen(keyless + "/ui/frame.html").headers["Content-Security-Policy"]
    assert frame.startswith("sandbox allow-scripts;") and "connect-src 'none'" in frame, frame


def test_ui_off_serves_404(no_ui: str) -> None:
    for path in ("/", "/ui/app.js", "/ui/plotly.min.js"):
        try:
            urllib.request.urlopen(no_ui + path)
            raise AssertionError(f"{path} is served with ui off")
        except urllib.error.HTTPError as e:
            assert e.code == 404, (path, e.code)
    # The API itself is still there.
    assert urllib.request.urlopen(no_ui + "/v1/health").status == 200


def test_an_exception_is_shown_with_its_line_marked(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(page, "x = 1\ny = x / 0\nprint(y)\n")
    cell = wait_done(page)
    expect(cell.locator(".error-head")).to_have_text("ZeroDivisionError: division by zero (line 2)")
    lines = cell.locator(".cell-code .error-line").evaluate_all("rows => rows.map(r => r.dataset.line)")
    assert lines == ["2"], lines
    expect(cell).to_have_class(re.compile(r"\bfailed\b"))
    # Once, in the error box: not again in the streamed stderr.
    assert "Traceback" not in cell.locator(".stream").inner_text()
    shoot(page, "exception")


def test_a_vega_lite_chart_is_summarised_with_its_data(page: Page, keyless: str) -> None:
    page.goto(keyless + "/")
    run(
        page,
        "import altair as alt\nimport pandas as pd\n"
        "df = pd.DataFrame({'fruit': ['apple', 'pear'], 'count': [3, 5]})\n"
        "alt.Chart(df, title='fruit').mark_bar().encode(x='fruit', y='count')\n",
    )
    cell = wait_done(page)
    summary = cell.locator(".vega")
    expect(summary).to_contain_text("Vega-Lite chart: fruit — bar mark; x: fruit (nominal), y: count (quantitative)")
    rows = summary.locator("tbody tr").evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [["apple", "3"], ["pear", "5"]], rows


def test_an_operator_key_sees_the_whole_server_and_the_chart(page: Page, keyed: str) -> None:
    page.goto(keyed + "/")
    page.fill("#key-input", OPERATOR_KEY)
    page.click("#key-form button")
    page.click("#tab-status")
    expect(page.locator("#status-load")).to_contain_text("the whole server")
    expect(page.locator("#chart svg")).to_be_visible()
    expect(page.locator("#chart-note")).to_contain_text("from /metrics")
