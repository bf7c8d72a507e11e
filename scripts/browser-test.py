#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium.

Started by scripts/test.sh inside its network namespace (loopback only, next to the test
dockerd). It starts gantry on a token listener with the dashboard, then in the page: signs in
with the token, renames the device, imports a bundle (with an image tarball) through the file
form and watches the progress (the upload slowed down to a few seconds by Chromium's network
emulation: the bar moves with bytes, rate and ETA, and a step the daemon reports arrives),
sees the app appear, starts it, stops it, starts it again and sees the status change when its
container is stopped behind gantry's back (`docker stop`), then reads its logs.

Environment: GANTRY_BIN, DOCKER_HOST_URI, DOCKER_CLI, IMAGE, WORKDIR (an empty directory).
Exit status 0 when every step passed.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

GANTRY = os.environ["GANTRY_BIN"]
DOCKER_HOST = os.environ["DOCKER_HOST_URI"]
DOCKER = os.environ.get("DOCKER_CLI", "docker")
IMAGE = os.environ["IMAGE"]
WORK = os.environ["WORKDIR"]
TOKEN = "browser-test-token-0123456789abcdef"
APP = "browser:1"
TIMEOUT = 60
# The bundle is about 2 MiB: about 4 s of upload.
UPLOAD_BYTES_PER_SEC = 512 * 1024


def log(msg):
    print(f"browser-test: {msg}", flush=True)


def docker(*args, **kw):
    return subprocess.run([DOCKER, "-H", DOCKER_HOST, *args], check=True, capture_output=True, **kw)


def bundle():
    """A bundle whose compose file runs a tagged copy of the test image, carried as
    docker/app.tar (so the import really loads an image and reports its progress)."""
    ref = "gantry-browser/app:1"
    docker("tag", IMAGE, ref)
    tar = os.path.join(WORK, "app.tar")
    docker("save", "-o", tar, ref)
    docker("rmi", ref)
    path = os.path.join(WORK, "browser-app.zip")
    compose = (
        "services:\n  main:\n    image: " + ref + "\n"
        "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo hello-from-the-browser-app; "
        "while true; do sleep 0.5; done\"]\n    stop_grace_period: 1s\n"
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.yml", "Name: browser\nVersion: '1'\nDescription: browser test\n")
        z.writestr("compose.yaml", compose)
        z.write(tar, "docker/app.tar")
    return path


def start_gantry():
    os.makedirs(os.path.join(WORK, "state"), exist_ok=True)
    token_file = os.path.join(WORK, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN)
    config = os.path.join(WORK, "gantry.toml")
    with open(config, "w") as f:
        f.write(
            f'state_dir = "{WORK}/state"\ndocker_host = "{DOCKER_HOST}"\n'
            '[[listeners]]\ndialect = "transfer"\naddress = "127.0.0.1:0"\n'
            f'auth = "token"\ntoken_file = "{token_file}"\nui = true\n'
        )
    err = open(os.path.join(WORK, "gantry.log"), "w")
    proc = subprocess.Popen([GANTRY, "serve", "--config", config], stderr=err, stdout=err)
    deadline = time.time() + 15
    while time.time() < deadline:
        with open(os.path.join(WORK, "gantry.log")) as f:
            m = re.search(r"listening dialect=transfer address=(\S+)", f.read())
        if m:
            return proc, m.group(1)
        time.sleep(0.05)
    raise SystemExit("gantry did not report its address")


def api(addr, method, path):
    """The status and the body of an API call."""
    req = urllib.request.Request(f"http://{addr}/api{path}", method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={WORK}/chromium-profile",
    ]:
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)


def row_status(d):
    """The app's status in its row, once no operation runs on it (its buttons work)."""
    rows = d.find_elements(By.CSS_SELECTOR, f'#apps tr[data-id="{APP}"]')
    if not rows or rows[0].get_attribute("data-busy") != "false":
        return None
    return rows[0].get_attribute("data-status")


def wait(d, what, cond):
    try:
        return WebDriverWait(d, TIMEOUT, poll_frequency=0.1).until(lambda _: cond())
    except Exception:
        err = d.find_element(By.ID, "error").text
        raise SystemExit(f"timed out waiting for {what} (page error: {err!r})")


def click(d, cls):
    d.find_element(By.CSS_SELECTOR, f'#apps tr[data-id="{APP}"] button.{cls}').click()


def sign_in(d, addr):
    d.get(f"http://{addr}/ui/")
    wait(d, "the token form", lambda: d.find_element(By.ID, "login").is_displayed())
    d.find_element(By.ID, "token").send_keys(TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(d, "the dashboard", lambda: d.find_element(By.ID, "main").is_displayed())
    wait(d, "live updates", lambda: d.find_element(By.ID, "live").text == "live")
    wait(d, "the versions", lambda: "Docker " in d.find_element(By.ID, "versions").text)
    versions = d.find_element(By.ID, "versions").text
    assert "gantry " in versions, versions
    log(f"signed in; header says {versions!r}")
    # Everything the first load transferred (page, script, style, API answers), a fresh
    # profile having no cache.
    moved = d.execute_script(
        "const nav = performance.getEntriesByType('navigation')[0];"
        "let total = nav ? nav.transferSize : 0;"
        "for (const r of performance.getEntriesByType('resource')) total += r.transferSize;"
        "return total;"
    )
    assert 0 < moved < 100 * 1024, moved
    log(f"first load transferred {moved} bytes")


def rename(d, addr):
    """The device name in the header, changed through the page's prompt."""
    wait(d, "the device name", lambda: d.find_element(By.ID, "device").text)
    d.find_element(By.ID, "rename").click()
    alert = WebDriverWait(d, TIMEOUT).until(lambda _: d.switch_to.alert)
    alert.send_keys("browser-gateway")
    alert.accept()
    wait(d, "the new name", lambda: d.find_element(By.ID, "device").text == "browser-gateway")
    status, body = api(addr, "GET", "/devicename")
    assert status == 200 and json.loads(body) == "browser-gateway", (status, body)
    log("renamed the device from the page")


def import_bundle(d, path):
    # The upload is slowed down (Chromium's own network emulation) so that it lasts a few
    # seconds: long enough to watch the bar move and the daemon's steps arrive.
    d.execute_cdp_cmd("Network.enable", {})
    d.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": UPLOAD_BYTES_PER_SEC,
    })
    d.find_element(By.ID, "import-file").send_keys(path)
    d.find_element(By.ID, "import-button").click()
    seen = []  # (bar, text) as they changed
    deadline = time.time() + TIMEOUT
    while not d.find_element(By.ID, "import-result").text:
        now = (float(d.find_element(By.ID, "import-bar").get_attribute("value")),
               d.find_element(By.ID, "import-text").text)
        if not seen or seen[-1] != now:
            seen.append(now)
        if time.time() > deadline:
            raise SystemExit(f"the import did not end within {TIMEOUT} s; progress seen: {seen}")
        time.sleep(0.1)
    d.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
    })
    result = d.find_element(By.ID, "import-result").text
    assert result == f"Imported {APP}.", result
    steps = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#import-steps li")]
    assert "upload complete" in steps and steps[-1] == "imported", steps
    # A step the daemon reported while it ran (GET /api/tasks), not only the page's own two.
    assert len(steps) > 2, steps
    # The bar moved through the upload, with bytes, rate and ETA.
    moving = [t for bar, t in seen if 0 < bar < 1 and "ETA" in t]
    assert len(moving) >= 2, seen
    assert float(d.find_element(By.ID, "import-bar").get_attribute("value")) == 1.0
    log(f"imported; progress on the way {moving[0]!r} .. {moving[-1]!r}, steps {steps}")


def lifecycle(d):
    wait(d, "the app's row", lambda: row_status(d) == "Stopped")
    click(d, "start")
    wait(d, "Running after Start", lambda: row_status(d) == "Running")
    click(d, "stop")
    wait(d, "Stopped after Stop", lambda: row_status(d) == "Stopped")
    click(d, "start")
    wait(d, "Running after the second Start", lambda: row_status(d) == "Running")
    log("started, stopped and started from the page")
    names = docker("ps", "-q", "--filter", f"label=io.gantry.app-id={APP}", text=True).stdout.split()
    assert names, "no running container"
    docker("stop", *names)
    wait(d, "Stopped after docker stop", lambda: row_status(d) == "Stopped")
    log("saw the app stop behind gantry's back (docker stop)")
    click(d, "logs")
    wait(d, "the logs", lambda: "hello-from-the-browser-app" in d.find_element(By.ID, "logs").text)
    log("read the app's logs")


def main():
    path = bundle()
    proc, addr = start_gantry()
    d = None
    try:
        d = browser()
        sign_in(d, addr)
        rename(d, addr)
        import_bundle(d, path)
        lifecycle(d)
        api(addr, "DELETE", "/transfer/apps/" + urllib.parse.quote(APP, safe=""))
        log("OK")
    finally:
        if d is not None:
            d.quit()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
