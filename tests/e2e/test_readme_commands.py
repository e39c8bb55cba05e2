"""The README's commands, verbatim, in a fresh clone, from a shell that never activated anything.

What a newcomer does: clone, ``make demo``, ``make ui``, log in, open the data-retention page.
This test does exactly that and checks each step:

- ``git clone`` of this repository (its committed HEAD) into a temporary directory;
- the commands are read from the README's "The two commands" section (``make demo``, ``make ui``)
  and run as they are written, with ``bash -c``, under a minimal
  environment, the equivalent of ``env -i HOME=<empty temporary home> PATH=/usr/bin:/bin``;
- ``make demo`` exits 0 and prints the sweep table, the ledger verification and a receipt,
  with no e-mail address anywhere in its output;
- ``make ui`` says it is ready within its start-up time; ``/retention/`` answers 200 after a login
  with the password from the simple auth manager's generated passwords file and lists every rule
  of the demo's data map, the open (queued) request and the erase / restrict actions;
- headless Chromium (Debian's ``chromium`` + ``chromedriver``, through selenium) logs in and takes
  the README's screenshots: the retention page and the trigger form of ``erasure_request``, into
  ``docs/img/`` of this checkout (``retention-page.png``, ``run-receipt.png``, ``trigger-form.png``);
- Ctrl-C (SIGINT to ``make ui``'s process group, as a terminal sends it) stops everything: no
  process whose command line, working directory or environment mentions the clone is left.

Deviations from a bare new machine, and why:

- The clone's ``.venv`` is a symlink to this checkout's ``.venv``: installing the pinned requirements
  takes about two minutes and needs the package index, and is not what is under test here. The
  Makefile's venv stamp is a copy of the requirements it installed, so the clone (same
  requirements.txt, new file times) reuses it and installs nothing. A symlink rather than a copy
  (``cp -al``) because it costs nothing and the venv is only read; the clone's own path still
  comes first on PATH (``<clone>/.venv/bin``), so every process it starts names the clone.
- The default ports (8080 for the UI, 5055 for the demo's S3) are used when they are free. Other
  tests on this machine may hold them; then ``RETENTION_UI_PORT`` / ``RETENTION_DEMO_S3_PORT`` with
  free ports are the only additions to the environment.

Marked ``slow`` (the slowest tier: ``make test`` runs it last, ``make test-slow`` runs it alone).
Output of each command goes to ``artifacts/readme/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ARTIFACTS = ROOT / "artifacts" / "readme"
IMAGES = ROOT / "docs" / "img"
DEMO_TIMEOUT = 600
UI_START_TIMEOUT = int(os.environ.get("RETENTION_UI_START_TIMEOUT", "240")) + 30  # make ui's own limit + margin
UI_STOP_TIMEOUT = 60
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def readme_commands() -> tuple[str, str]:
    """``make demo`` and ``make ui`` as the README's "The two commands" section writes them (its bash blocks)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```bash")[1:]]
    commands = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    commands = [c for c in commands if c]
    for wanted in ("make demo", "make ui"):
        assert wanted in commands, f"the README's first section no longer shows `{wanted}`: {commands}"
    return "make demo", "make ui"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(clone: Path) -> list[tuple[int, str]]:
    """Processes (not this one) whose command line, working directory or environment names ``clone``."""
    marker, found = str(clone).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if not cmdline:
                continue  # kernel thread or zombie
            cwd = os.readlink(entry / "cwd").encode()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if marker in cmdline or cwd.startswith(marker) or marker in environ:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


@pytest.fixture
def clone(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("readme")
    repo = base / "privacy-retention"
    cloned = subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], capture_output=True, text=True,
                            timeout=120)
    assert cloned.returncode == 0, f"cannot `git clone` this checkout (is it a git repository?): {cloned.stderr}"
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout to lend to the clone (run `make venv`)")
    (repo / ".venv").symlink_to(venv, target_is_directory=True)
    (base / "home").mkdir()
    yield repo
    leftovers = processes_of(repo)
    for pid, _ in leftovers:  # started by this test: never leave them behind, even when it failed
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(base, ignore_errors=True)


def minimal_env(clone: Path) -> dict[str, str]:
    env = {"HOME": str(clone.parent / "home"), "PATH": "/usr/bin:/bin"}
    if not port_free(8080):
        env["RETENTION_UI_PORT"] = str(free_port())
    if not port_free(5055):
        env["RETENTION_DEMO_S3_PORT"] = str(free_port())
    return env


def start_browser(profile: str):
    """Headless Chromium through selenium, or a skip (a failure under CI=true) when it is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver; pip install -r requirements.txt"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-sync", "--disable-component-update",
                "--hide-scrollbars", "--window-size=1280,1100", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(ARTIFACTS / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    return driver


def screenshots(base_url: str, password: str) -> None:
    """Log in through Airflow's form, then the retention page and erasure_request's trigger form into docs/img/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="readme-chromium-")
    driver = start_browser(profile)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(f"{base_url}/retention/")  # not logged in: Airflow's login form
        wait.until(EC.visibility_of_element_located((By.NAME, "username"))).send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url)

        # The page inside the Airflow UI (its navigation entry "Data retention"), as a newcomer finds it.
        driver.get(f"{base_url}/plugin/data-retention")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        driver.switch_to.frame(frame)
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "tr[data-rule-id]")))
        driver.switch_to.default_content()
        time.sleep(1.0)  # the UI's fonts and icons
        IMAGES.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(IMAGES / "retention-page.png"))

        # The receipt on the page of the demo's erasure_request run (its "Receipts" tab: external view, dag_run).
        driver.switch_to.frame(frame)
        link = driver.find_element(By.CSS_SELECTOR,
                                   "h2#recent-requests + table a[data-ui-link][href*='/erasure_request/']")
        run_path = link.get_attribute("href").split("://", 1)[1].split("/", 1)[1]
        driver.switch_to.default_content()
        driver.get(f"{base_url}/{run_path}/plugin/receipts")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        driver.switch_to.frame(frame)
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "section[data-request-id]")))
        assert "person@example.org" not in driver.page_source
        driver.switch_to.default_content()
        time.sleep(1.0)
        driver.save_screenshot(str(IMAGES / "run-receipt.png"))

        driver.get(f"{base_url}/dags/erasure_request")
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"))).click()
        wait.until(EC.visibility_of_element_located((By.ID, "element_email"))).send_keys("person@example.org")
        time.sleep(1.0)
        driver.save_screenshot(str(IMAGES / "trigger-form.png"))
    except BaseException:
        try:
            driver.save_screenshot(str(ARTIFACTS / "browser-failure.png"))
        except Exception:  # noqa: BLE001 - the browser itself may be gone
            pass
        raise
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _as_from_a_terminal() -> None:
    """In the child: SIGINT and SIGQUIT as a terminal's shell leaves them. A test run started in the background
    of a non-interactive shell (`nohup bash .ci/run &`) inherits them ignored, and a signal ignored on entry
    cannot be trapped by bash: `make ui` would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def stop(proc: subprocess.Popen) -> float:
    """Ctrl-C, as a terminal sends it (SIGINT to the foreground process group); seconds until it ended."""
    started = time.monotonic()
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return 0.0
    try:
        proc.wait(timeout=UI_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"`make ui` did not stop within {UI_STOP_TIMEOUT} s of Ctrl-C")
    return time.monotonic() - started


def test_readme_commands_in_a_fresh_clone(clone: Path):
    demo_cmd, ui_cmd = readme_commands()
    env = minimal_env(clone)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # ---- make demo --------------------------------------------------------------------------------
    started = time.monotonic()
    demo = subprocess.run(["bash", "-c", demo_cmd], cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=DEMO_TIMEOUT)
    timings["make demo"] = time.monotonic() - started
    (ARTIFACTS / "make-demo.log").write_text(demo.stdout)
    out = demo.stdout
    assert demo.returncode == 0, f"`{demo_cmd}` failed ({demo.returncode}):\n{out[-4000:]}"
    assert "venv: installing" not in out, "the clone reinstalled the venv instead of reusing it"
    # the sweep table (dry run and applied) and the ledger verification
    assert re.search(r"^rule\s+mode\s+locked\s+anonymized\s+deleted\s+held\s+kept", out, re.M), out[-4000:]
    assert re.search(r"^crm\.leads\.inactivity\s+applied\s", out, re.M), out[-4000:]
    assert re.search(r"ledger OK: \d+ entries, chain intact", out), out[-4000:]
    # receipts: erase (dry run, then for real) and restrict, with their systems and counts
    assert out.count("# Receipt for request ") == 3, out[-6000:]
    modes = re.findall(r"mode: \**(erase|restrict)\**( \(dry run\))?", out)
    assert sorted(modes) == [("erase", ""), ("erase", " (dry run)"), ("restrict", "")], modes
    assert "| system | status | collection | records |" in out
    assert "exception" in out.lower(), "the erased demo person has a row under legal hold: an exception is expected"
    assert "queued 1 request(s) for erasure_intake" in out
    assert not EMAIL.findall(out), f"personal data in the demo's output: {EMAIL.findall(out)[:3]}"

    # ---- make ui ----------------------------------------------------------------------------------
    port = int(env.get("RETENTION_UI_PORT", "8080"))
    base_url = f"http://127.0.0.1:{port}"
    ui_log = ARTIFACTS / "make-ui.log"
    started = time.monotonic()
    with open(ui_log, "w") as log:
        ui = subprocess.Popen(["bash", "-c", ui_cmd], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        while "ui: ready" not in ui_log.read_text():
            assert ui.poll() is None, f"`{ui_cmd}` ended ({ui.returncode}):\n{ui_log.read_text()[-3000:]}"
            assert time.monotonic() - started < UI_START_TIMEOUT, \
                f"`{ui_cmd}` not ready within {UI_START_TIMEOUT} s:\n{ui_log.read_text()[-3000:]}"
            time.sleep(1)
        timings["make ui: ready"] = time.monotonic() - started
        said = ui_log.read_text()
        passwords = json.loads((clone / ".demo/airflow/simple_auth_manager_passwords.json.generated").read_text())
        password = passwords["admin"]
        assert password in said, "make ui does not print the login"

        with httpx.Client(base_url=base_url, timeout=30) as http:
            token = http.post("/auth/token", json={"username": "admin", "password": password})
            assert token.status_code in (200, 201), token.text
            assert http.get("/retention/", follow_redirects=False).status_code in (302, 303, 307, 401)
            page = http.get("/retention/", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        assert page.status_code == 200, page.text[:2000]
        from include.retention.policy import load_policy

        rules = load_policy(clone / "config" / "policy.yaml").rule_ids()
        assert rules
        for rule in rules:
            assert f'data-rule-id="{rule}"' in page.text, f"rule {rule} not on the retention page"
        assert "Open requests (1," in page.text, "the request queued by make demo is not open on the page"
        assert "data-request-id=" in page.text
        assert re.search(r"</i>erase\s+[1-9]", page.text) and re.search(r"</i>restrict\s+[1-9]", page.text), \
            "the demo's erase / restrict actions are not in the page's chart"
        assert not EMAIL.findall(re.sub(r"<script.*?</script>", "", page.text, flags=re.S))

        screenshots(base_url, password)
    finally:
        timings["make ui: stop"] = stop(ui)
        (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=1))
    print("timings:", {k: round(v, 1) for k, v in timings.items()})

    assert "ui: stopped" in ui_log.read_text()
    time.sleep(1)
    assert processes_of(clone) == [], "processes of the clone are still running after Ctrl-C"
    assert port_free(port), f"port {port} still answers after make ui stopped"
