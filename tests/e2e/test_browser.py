"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) against the real
api-server of the LocalExecutor stack:

- an unauthenticated visit of the data-retention page lands on Airflow's login form; logging in there
  (FAB auth manager) works;
- the trigger form of ``erasure_request`` renders its fields, and submitting it (a dry run) starts a
  run with exactly the form's values that succeeds and changes nothing;
- the data-retention page (``/retention/``, and inside the UI at ``/plugin/data-retention``) lists the
  open requests we registered, overdue first, with their days left and status; in light and dark (the system's
  preference standalone, the UI's own theme setting in its frame), its skip link the first Tab stop;
- the run's receipt at the run-page view (``/retention/runs/<dag_id>/<run_id>``);
- while a slow sweep runs, its rule with rows done of planned and the time left, followed by polling; an erasure
  run's receipt with its counts in the run page's Receipts tab inside the Airflow UI.

Screenshots go to ``artifacts/e2e/browser-*.png``. Under CI=true a missing browser is a failure.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from include.retention.registry import Identities, NewRequest, Registry
from tests.airflow.test_erasure_request_dag import SECRET, SUBJECT, snapshot
from tests.conftest import IN_CI
from tests.e2e.conftest import ADMIN, ARTIFACTS, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TRIGGER_FIELDS = {  # param -> label of erasure_request's trigger form
    "email": "E-mail address", "phone": "Phone (optional)", "customer_ref": "Customer reference (optional)",
    "mode": "Mode", "dry_run": "Dry run", "request_ref": "External request reference", "note": "Note",
}


def _missing(what: str):
    msg = f"{what}; install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -r requirements.txt)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(Path(path).name)):
            _missing(f"{path} not found")
    profile = tempfile.mkdtemp(prefix="retention-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"),
                      log_output=str(ARTIFACTS / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> Path:
    path = ARTIFACTS / f"browser-{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_login_trigger_form_and_retention_page(browser, local_stack: Stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    stack, world = local_stack, local_stack.world
    wait = WebDriverWait(browser, 60)
    registry = Registry(world.ledger_engine, SECRET)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    # Two open requests as the intake path leaves them (erasure_intake is paused here): one overdue.
    overdue = registry.register(NewRequest(Identities(email="late.person@example.org"), source="api"),
                                received_at=now - dt.timedelta(days=40))
    fresh = registry.register(NewRequest(Identities(email="new.person@example.org"), source="api"),
                              received_at=now - dt.timedelta(days=3))

    try:
        # 1. Not logged in: the data-retention page sends the browser to Airflow's login form.
        browser.get(f"{stack.base_url}/retention/")
        user = wait.until(EC.visibility_of_element_located((By.NAME, "username")))
        assert "/auth/login" in browser.current_url
        shot(browser, "1-login")
        user.send_keys(ADMIN)
        browser.find_element(By.NAME, "password").send_keys(stack.password)
        # FAB's login form (the e2e stack runs the FAB auth manager): an <input type=submit>
        browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url)
        assert any(c["name"] == "_token" for c in browser.get_cookies())

        # 2. The trigger form of erasure_request renders every field of the DAG's params.
        browser.get(f"{stack.base_url}/dags/erasure_request")
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"))).click()
        email = wait.until(EC.visibility_of_element_located((By.ID, "element_email")))
        modal = next(m for m in browser.find_elements(By.CSS_SELECTOR, "[role=dialog]") if "E-mail address" in m.text)
        text = modal.text
        assert "erasure_request" in text
        for label in TRIGGER_FIELDS.values():
            assert label in text, f"trigger form lacks {label!r}:\n{text}"
        for param in ("email", "phone", "customer_ref", "request_ref", "note", "dry_run", "mode"):
            assert browser.find_elements(By.NAME, f"element_{param}"), f"no input for param {param}"
        assert "erase" in modal.find_element(By.XPATH, ".//*[normalize-space(text())='Mode']/ancestor::*[.//input"
                                                         "[@name='element_mode']][1]").text
        shot(browser, "2-trigger-form")

        # ... and submitting it (a dry run for the subject) starts a run with the form's values.
        before = snapshot(world.crm, world.mailing, {"contact": -1, "subscriber": -1})
        email.send_keys(SUBJECT)
        dry_run = browser.find_element(By.NAME, "element_dry_run")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", dry_run)
        dry_run.find_element(By.XPATH, "./ancestor::label[1]").click()
        assert dry_run.is_selected()
        shot(browser, "3-trigger-form-filled")
        submit = next(b for b in modal.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
        submit.click()
        wait.until(lambda d: "/runs/" in d.current_url)
        run_id = unquote(browser.current_url.rsplit("/runs/", 1)[1].split("?")[0])
        run = stack.wait_run("erasure_request", run_id, timeout=300)
        assert run["conf"]["email"] == SUBJECT and run["conf"]["dry_run"] is True and run["conf"]["mode"] == "erase"
        assert all(run["conf"][p] is None for p in ("phone", "customer_ref", "request_ref", "note"))
        assert run["triggering_user_name"] == ADMIN
        triggered = registry.request_id_for("erasure_request", run_id)
        request = registry.get(triggered)
        assert request["status"] == "complete" and request["dry_run"]
        assert registry.receipt(triggered)["verification"].startswith("dry run")
        assert snapshot(world.crm, world.mailing, {"contact": -1, "subscriber": -1}) == before  # nothing changed
        shot(browser, "4-triggered-run")

        # 3. The data-retention page: our open requests, overdue first, days left and status.
        browser.get(f"{stack.base_url}/retention/")
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-request-id='{fresh}']")))
        today = dt.datetime.now(dt.UTC).date()
        rows = browser.find_elements(By.CSS_SELECTOR, "h2#requests + table tr[data-request-id]")
        ids = [r.get_attribute("data-request-id") for r in rows]
        assert ids.index(overdue) < ids.index(fresh), "overdue requests come first"
        assert triggered not in ids, "a completed request is not open"
        closed = browser.find_elements(By.CSS_SELECTOR, "h2#recent-requests + table tr[data-request-id]")
        assert triggered in [r.get_attribute("data-request-id") for r in closed], "... it is recently closed"
        for rid, is_overdue in ((overdue, True), (fresh, False)):
            row = rows[ids.index(rid)]
            cells = row.find_elements(By.TAG_NAME, "td")
            days_left = (registry.get(rid)["due_at"].date() - today).days
            assert cells[0].text == rid
            assert cells[1].text == "erase"
            assert cells[2].text == "pending"
            assert row.find_element(By.CSS_SELECTOR, "td.days-left").text.split()[0] == str(days_left)
            assert ("overdue" in row.find_element(By.CSS_SELECTOR, "td.days-left").text) is is_overdue
            assert ("overdue" in (row.get_attribute("class") or "")) is is_overdue
        assert (registry.get(fresh)["due_at"].date() - today).days > 0
        assert (registry.get(overdue)["due_at"].date() - today).days < 0
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "Signed in as admin" in page
        for address in ("late.person@example.org", "new.person@example.org", SUBJECT.lower()):
            assert address not in browser.page_source.lower(), "the page must show no personal data"
        shot(browser, "5-retention-page")

        # ... in the Airflow UI's look, light and dark (the system's preference when not in the UI's frame), and
        # reachable by keyboard: the first Tab stop is the skip link to the open requests.
        from selenium.webdriver.common.keys import Keys

        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert browser.execute_script("return document.activeElement.className") == "skip"
        backgrounds = {}
        for scheme in ("light", "dark"):
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                    {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
            browser.get(f"{stack.base_url}/retention/")
            wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-request-id='{fresh}']")))
            backgrounds[scheme] = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
            shot(browser, f"5-retention-page-{scheme}")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        assert backgrounds["light"] != backgrounds["dark"], backgrounds

        # 4. The same page inside the Airflow UI (navigation entry, shown in a frame).
        browser.get(f"{stack.base_url}/plugin/data-retention")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        nav = browser.execute_script("return document.body.textContent")
        assert "Data retention" in nav, "no navigation entry for the data-retention page"
        browser.switch_to.frame(frame)
        row = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-request-id='{overdue}']")))
        assert "pending" in row.text and "overdue" in row.text
        browser.switch_to.default_content()
        time.sleep(0.5)
        shot(browser, "6-retention-in-ui")

        # ... following the UI's own theme setting (next-themes: localStorage "theme", class on the UI's <html>)
        for theme in ("dark", "light"):
            browser.execute_script("window.localStorage.setItem('theme', arguments[0])", theme)
            browser.get(f"{stack.base_url}/plugin/data-retention")
            frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
            wait.until(lambda d, t=theme: d.execute_script(
                "return document.documentElement.classList.contains(arguments[0])", t))
            browser.switch_to.frame(frame)
            wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-request-id='{overdue}']")))
            assert browser.execute_script("return document.documentElement.classList.contains(arguments[0])", theme)
            browser.switch_to.default_content()
            time.sleep(0.5)
            shot(browser, f"6-retention-in-ui-{theme}")

        # 5. The receipt on the run page (external view, destination dag_run): the run we triggered above.
        browser.get(f"{stack.base_url}/retention/runs/erasure_request/{quote(run_id, safe='')}")
        section = wait.until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f"section[data-request-id='{triggered}']")))
        assert "dry run" in section.text and SUBJECT.lower() not in browser.page_source.lower()
        shot(browser, "7-run-receipt")
    except BaseException:
        try:
            shot(browser, "failure")
        except Exception:  # noqa: BLE001 - the browser itself may be gone
            pass
        raise


RECEIPT_PERSON = "receipt.view@example.org"


def _login(browser, stack: Stack, wait) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(f"{stack.base_url}/retention/")
    user = wait.until(EC.visibility_of_element_located((By.NAME, "username")))
    user.send_keys(ADMIN)
    browser.find_element(By.NAME, "password").send_keys(stack.password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    wait.until(lambda d: "/auth/login" not in d.current_url)


def _figure(cell_text: str) -> int:
    return int(cell_text.replace(",", ""))


def test_running_sweep_progress_and_run_receipt_in_the_ui(browser, local_stack: Stack):
    """While a slow sweep runs (a row trigger on the stack's CRM database sleeps on every delete), the page shows
    its rule with rows done of planned and the time left, and follows it by polling; the receipt of an erasure
    run, on that run's page inside the Airflow UI (the Receipts tab, an external view of destination dag_run),
    shows the counts of the registry's receipt. Screenshots: ``browser-8-running-sweep.png`` (and
    ``-in-ui``) and ``browser-9-run-receipt-in-ui.png``."""
    import re

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from include.retention.demo.s3_seed import seed_objects
    from include.retention.ledger import RunRef
    from include.retention.requests.receipts import collection_lines, line_text
    from tests.airflow.test_erasure_request_dag import add_subject
    from tests.integration.test_progress_slow_sweep import ROWS, RULE, slow_sweep

    stack, world = local_stack, local_stack.world
    wait = WebDriverWait(browser, 60)
    stale = (StaleElementReferenceException, NoSuchElementException)  # the poll re-renders the rows
    try:
        _login(browser, stack, wait)

        # 1. A slow sweep: its rule on the page, rows done of planned, the time left; the figure moves on by itself.
        run = RunRef("retention_sweep", f"manual__e2e_slow_{int(time.time())}")
        with slow_sweep(world.crm_url, world.ledger_engine, key=SECRET, sleep_per_row=1.5, run=run) as ended:
            browser.get(f"{stack.base_url}/retention/#running")
            row = f"tr[data-running-rule='{RULE}']"
            first = WebDriverWait(browser, 90, poll_frequency=0.5, ignored_exceptions=stale).until(
                lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, row)
                                if 0 < _figure(r.find_element(By.CSS_SELECTOR, "td.done").text) < ROWS), None))
            done = _figure(first.find_element(By.CSS_SELECTOR, "td.done").text)
            assert _figure(first.find_element(By.CSS_SELECTOR, "td.planned").text) == ROWS
            assert first.find_element(By.CSS_SELECTOR, "td.left").text.endswith("left")
            assert run.run_id in first.text
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", first)
            shot(browser, "8-running-sweep")
            # the page polls /retention/api/progress: a later figure without a reload
            WebDriverWait(browser, 90, poll_frequency=0.5, ignored_exceptions=stale).until(
                lambda d: any(_figure(r.find_element(By.CSS_SELECTOR, "td.done").text) > done
                              for r in d.find_elements(By.CSS_SELECTOR, row))
                or d.find_elements(By.ID, "nothing-running"))
            assert "@example.org" not in browser.page_source
            # ... and inside the Airflow UI's frame
            browser.get(f"{stack.base_url}/plugin/data-retention")
            browser.switch_to.frame(wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe"))))
            framed = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, row)))
            assert _figure(framed.find_element(By.CSS_SELECTOR, "td.planned").text) == ROWS
            browser.execute_script("document.getElementById('running').scrollIntoView({block: 'start'})")
            browser.switch_to.default_content()
            time.sleep(0.5)
            shot(browser, "8-running-sweep-in-ui")
            deadline = time.monotonic() + 120
            while ended() is None:
                assert time.monotonic() < deadline, "the slow sweep did not end"
                time.sleep(0.5)
        assert ended()["deleted"] == ROWS
        browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
        wait.until(EC.presence_of_element_located((By.ID, "nothing-running")))  # polled: nothing runs any more
        browser.switch_to.default_content()

        # 2. An erasure run's receipt on its run page inside the Airflow UI.
        ids = add_subject(world.crm, world.mailing, RECEIPT_PERSON)
        seed_objects(world.s3, world.seeded_at, cv_keys=[f"cvs/{ids['applicant']}/cv.pdf"],
                     attachment_keys=[f"inquiries/{ids['inquiry']}/file.pdf"], log_days=0)
        stack.unpause("erasure_request")
        run_id = stack.trigger("erasure_request", {"email": RECEIPT_PERSON, "mode": "erase"})
        stack.wait_run("erasure_request", run_id, timeout=300)
        registry = Registry(world.ledger_engine, SECRET)
        request_id = registry.request_id_for("erasure_request", run_id)
        receipt = registry.receipt(request_id)
        expected = {}
        for system, entry in receipt["systems"].items():  # a system without collection lines shows one "-" row
            lines = collection_lines(entry) or {"-": None}
            expected.update({(system, ref): "" if line is None else line_text(line) for ref, line in lines.items()})
        assert any(re.search(r"deleted [1-9]", text) for text in expected.values()), expected

        browser.get(f"{stack.base_url}/dags/erasure_request/runs/{quote(run_id, safe='')}/plugin/receipts")
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        assert "/retention/runs/erasure_request/" in frame.get_attribute("src")
        browser.switch_to.frame(frame)
        section = wait.until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f"section[data-request-id='{request_id}']")))
        assert "erase, complete" in section.text
        shown = {(r.get_attribute("data-system"), r.get_attribute("data-collection")):
                 r.find_element(By.CSS_SELECTOR, "td.records").text
                 for r in section.find_elements(By.CSS_SELECTOR, "tr[data-system]")}
        assert shown == expected, (shown, expected)
        assert RECEIPT_PERSON not in browser.page_source.lower()
        browser.switch_to.default_content()
        assert RECEIPT_PERSON not in browser.page_source.lower()
        time.sleep(0.5)
        shot(browser, "9-run-receipt-in-ui")
    except BaseException:
        try:
            shot(browser, "failure-progress-receipt")
        except Exception:  # noqa: BLE001 - the browser itself may be gone
            pass
        raise
