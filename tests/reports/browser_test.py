#!/usr/bin/env python3
"""The HTML reports in a real browser (headless Chromium), one of each kind.

Builds each report with the tandem binary, loads it in Chromium and checks: no console message at
all (errors, warnings or logs: the page writes none), the sections and chart elements its kind
promises (queried in the DOM after the page's script ran), the timeline's zoom (the page opened at
#zoom=2 must widen its timeline), and a screenshot that is not blank.

usage: browser_test.py TANDEM_BINARY SOURCE_DIR
Exit 0: all good; 1: a check failed; 77: no Chromium (skipped; TANDEM_REQUIRE_BROWSER=1 makes
that a failure, as CI sets it).
"""
import html.parser
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit("command failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr))
    return r.stdout


class Dom(html.parser.HTMLParser):
    """Every element as (tag, id, classes, attributes), in document order."""

    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a.get("id"), set((a.get("class") or "").split()), a))

    handle_startendtag = handle_starttag

    def ids(self):
        return {e[1] for e in self.elements if e[1]}

    def count(self, tag, cls=None):
        return sum(1 for t, _, c, _ in self.elements if t == tag and (cls is None or cls in c))

    def first(self, tag, cls):
        return next((a for t, _, c, a in self.elements if t == tag and cls in c), None)

    def count_inside(self, outer_cls, tag, cls=None):
        """Elements of `tag` (with class `cls`) after the first <svg class=outer_cls> and before the next <svg>."""
        n, inside = 0, False
        for t, _, c, _ in self.elements:
            if t == "svg":
                if inside:
                    break
                inside = outer_cls in c
                continue
            if inside and t == tag and (cls is None or cls in c):
                n += 1
        return n


def chromium(browser, page, profile, extra):
    r = subprocess.run([browser] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile] + extra + [page],
                       capture_output=True, text=True, timeout=180)
    return r.stdout, r.stderr


def png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), "unexpected PNG format"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def check_report(browser, path, name, ids, charts, zoom=False):
    profile = tempfile.mkdtemp(prefix="tandem-chromium-")
    try:
        dom_text, log = chromium(browser, "file://" + path + ("#zoom=2" if zoom else ""), profile, ["--dump-dom"])
        console = [l for l in log.splitlines() if ":CONSOLE" in l or "Uncaught" in l]
        check(not console, "%s: no console messages%s" % (name, "" if not console else ": " + console[0]))
        dom = Dom()
        dom.feed(dom_text)
        for i in ids:
            check(i in dom.ids(), "%s: section #%s" % (name, i))
        for (svg_cls, tag, cls, at_least) in charts:
            n = dom.count_inside(svg_cls, tag, cls)
            check(n >= at_least, "%s: svg.%s has %d <%s%s> (at least %d)" % (name, svg_cls, n, tag, "." + cls if cls else "", at_least))
        if zoom:
            svg = dom.first("svg", "timeline")
            base = int(svg["data-left"]) + int(svg["data-plot"]) + 30
            check(float(svg["width"]) > 3.9 * base - 200, "%s: #zoom=2 widened the timeline (%s px, base %d)" % (name, svg["width"], base))
        shot = os.path.join(profile, "shot.png")
        chromium(browser, "file://" + path, profile, ["--window-size=1400,1800", "--screenshot=" + shot])
        w, h, bpp, rows = png_pixels(shot)
        colours, inked = set(), 0
        for row in rows[::4]:
            for x in range(0, w * bpp, bpp * 4):
                px = row[x:x + 3]
                colours.add(px)
                inked += px != b"\xff\xff\xff"
        sampled = len(rows[::4]) * len(range(0, w * bpp, bpp * 4))
        check(inked > 0.02 * sampled and len(colours) >= 8,
              "%s: screenshot not blank (%.1f %% inked, %d colours)" % (name, 100.0 * inked / sampled, len(colours)))
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main():
    tandem, src = sys.argv[1], sys.argv[2]
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("no chromium on PATH (Debian: apt-get install chromium)")
        return 1 if os.environ.get("TANDEM_REQUIRE_BROWSER") == "1" else 77
    work = tempfile.mkdtemp(prefix="tandem-report-test-")
    try:
        def out(name):
            return os.path.join(work, name)

        def tandem_json(args, name):
            with open(out(name), "w") as f:
                f.write(run([tandem] + args))
            return out(name)

        v3 = os.path.join(src, "scenarios/deepseek-v3-2048.yaml")
        tiny = os.path.join(src, "scenarios/tiny-dualpipe.yaml")
        small = os.path.join(src, "scenarios/tiny-sim-128.yaml")

        # The default scenario's prediction with its timeline: PP16 x 120 micro-batches.
        tandem_json(["simulate", v3, "--json", "--trace", out("v3.trace.json")], "v3.json")
        run([tandem, "report", out("v3.json"), out("v3.trace.json"), "-o", out("v3.html")])
        check_report(browser, out("v3.html"), "simulate", ["summary", "time-by-rank", "time-by-kind", "timeline", "memory", "routing"],
                     [("time-by-rank", "rect", "bar", 17 * 5), ("time-by-kind", "rect", "bar", 10),
                      ("timeline", "rect", "slot", 16 * 100), ("timeline", "rect", "comm", 16 * 20),
                      ("memory", "rect", "bar", 16), ("memory", "line", "reference", 1)], zoom=True)

        # The prediction against a profiler trace of real training (kinds align, not tasks).
        tandem_json(["compare", out("v3.trace.json"), os.path.join(src, "tests/data/train-excerpt.json"), "--scenario", v3, "--json"],
                    "profile.json")
        run([tandem, "report", out("profile.json"), "-o", out("profile.html")])
        check_report(browser, out("profile.html"), "compare-profile", ["compare"], [("compare-kinds", "rect", "bar", 2 * 3)])

        # Skewed routing: the load per EP member is drawn.
        tandem_json(["simulate", small, "--set", "routing.model=skewed", "--set", "routing.skew=1", "--json"], "skew.json")
        run([tandem, "report", out("skew.json"), "-o", out("skew.html")])
        check_report(browser, out("skew.html"), "skewed", ["summary", "routing"],
                     [("routing", "rect", "bar", 8), ("routing", "line", "reference", 1)])

        # A sweep: each metric against the varied key.
        tandem_json(["sweep", small, "--vary", "plan.pp=2,4", "--vary", "batch.global_sequences=1024,2048", "--json"], "sweep.json")
        run([tandem, "report", out("sweep.json"), "-o", out("sweep.html")])
        check_report(browser, out("sweep.html"), "sweep", ["sweep"], [("sweep-chart", "circle", "point", 4), ("sweep-chart", "path", "line", 2)])

        # A plan search: the fastest plans and the best step time against each searched key.
        tandem_json(["plan", tiny, "--fix", "comm.sms=20", "--fix", "plan.dp_overlap=false", "--fix", "batch.micro_batch_sequences=2",
                     "--vary", "plan.pp=2,4", "--vary", "plan.ep=1,2", "-j", "2", "--json"], "plan.json")
        run([tandem, "report", out("plan.json"), "-o", out("plan.html")])
        check_report(browser, out("plan.html"), "plan", ["plan"], [("plan-top", "rect", "bar", 2), ("plan-key", "circle", "point", 2)])

        # Prediction against a CPU measurement of the same scenario.
        tandem_json(["simulate", tiny, "--json", "--trace", out("sim.trace.json")], "sim.json")
        tandem_json(["execute", tiny, "--json", "--trace", out("exec.trace.json")], "exec.json")
        tandem_json(["compare", out("sim.trace.json"), out("exec.trace.json"), "--json"], "cmp.json")
        run([tandem, "report", out("sim.json"), out("sim.trace.json"), out("exec.json"), out("exec.trace.json"),
             out("cmp.json"), "-o", out("cmp.html")])
        check_report(browser, out("cmp.html"), "compare",
                     ["summary", "summary-2", "timeline", "timeline-2", "time-by-rank-2", "compare"],
                     [("compare-kinds", "rect", "bar", 2 * 14), ("timeline", "rect", "slot", 4 * 12)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d failed" % len(failures) if failures else "all report checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
