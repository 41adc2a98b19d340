"""The ClearML server double (tests/support/clearml_server.py), driven by the real ClearML SDK online.

ClearML's offline mode is process-global and the suite turns it on for the test process, so the
SDK runs in child processes whose environment is ``os.environ`` minus ``CLEARML_OFFLINE_MODE``
plus ``server.env()``. The children print one ``RESULT <json>`` line (or step lines when driven
over stdin); the tests assert on what the double recorded.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clearml_server import ClearMLServerDouble

pytest.importorskip("clearml")  # the collector extra
Image = pytest.importorskip("PIL.Image")

#: Task._create as the collector does it, and every kind of report the collector makes.
CREATE_SCRIPT = """
import json, sys
from pathlib import Path
from clearml import OutputModel, Task

work = Path(sys.argv[1])
task = Task._create(project_name="relay/double", task_name="created", task_type=Task.TaskTypes.training)
task.add_tags(["relay", "yolo"])
task.update_parameters({"General/lr": 0.01, "General/epochs": 3})
logger = task.get_logger()
for i in range(3):
    logger.report_scalar("train", "box_loss", 1.0 / (i + 1), i)
logger.report_single_value("mAP50", 0.5)
logger.report_image(
    "Mosaic", "train_batch", iteration=1, local_path=str(work / "image.png"), delete_after_upload=False
)
logger.report_plotly("curve", "PR", figure={"data": [{"x": [0, 1], "y": [1, 0]}], "layout": {}}, iteration=0)
logger.report_text("hello console", print_console=False)
# As the collector registers a model (no output_uri on the task): the file is not uploaded.
local = OutputModel(task=task, name="kept-local", framework="PyTorch")
local.update_weights(weights_filename=str(work / "last.pt"), auto_delete_file=False, async_enable=False)
task.output_uri = True  # the configured files host
uploaded = OutputModel(task=task, name="best", framework="PyTorch")
uploaded.update_weights(weights_filename=str(work / "best.pt"), auto_delete_file=False, async_enable=False)
task.flush(wait_for_uploads=True)
task.mark_completed()
task.close()
print("RESULT " + json.dumps({"task": task.id, "local": local.id, "uploaded": uploaded.id}), flush=True)
"""

#: Task.init, the way Ultralytics' built-in callback starts its task.
INIT_SCRIPT = """
import json, sys
from clearml import Task

task = Task.init(
    project_name="relay/double", task_name="initialised", tags=["Ultralytics"], output_uri=True,
    auto_connect_frameworks=False, auto_resource_monitoring=False, reuse_last_task_id=False,
)
task.connect({"lr": 0.01, "epochs": 3}, name="General")
task.get_logger().report_scalar("train", "box_loss", 0.5, 0)
print("hello from stdout", flush=True)
task.update_output_model(model_path=sys.argv[1], name="best", auto_delete_file=False)
task.flush(wait_for_uploads=True)
task.close()
print("RESULT " + json.dumps({"task": task.id}), flush=True)
"""

#: The collector's other calls: re-attach with Task.get_task, script, comment, models, statuses.
REATTACH_SCRIPT = """
import json, sys
from pathlib import Path
from clearml import OutputModel, Task
from clearml.backend_api.services import tasks as api_tasks

created = Task._create(project_name="relay/double", task_name="reattached")
created.output_uri = True
model = OutputModel(task=created, name="best", comment="clearml-relay run#7")
model.update_weights(
    weights_filename=sys.argv[1], auto_delete_file=False, update_comment=False, async_enable=False
)
task = Task.get_task(task_id=created.id)
task._update_script(api_tasks.Script(binary="python3.11", entry_point="train.py", working_dir="/w"))
task.set_comment("clearml-relay run r1")
comments = [m.comment for m in task.models["output"]]
statuses = []
for change in (
    lambda: task.mark_started(force=True),
    lambda: task.mark_stopped(force=True, status_message="producer vanished"),
    lambda: task.mark_failed(status_reason="boom", status_message="boom"),
):
    change()
    task.reload()
    statuses.append(str(task.status))
result = {"task": task.id, "name": task.name, "comments": comments, "statuses": statuses}
print("RESULT " + json.dumps(result), flush=True)
"""

#: A task and three scalars, flushed.
EVENTS_SCRIPT = """
import json
from clearml import Task

task = Task._create(project_name="relay/double", task_name="events")
for i in range(3):
    task.get_logger().report_scalar("train", "box_loss", float(i), i)
task.flush(wait_for_uploads=True)
print("RESULT " + json.dumps({"task": task.id}), flush=True)
"""

#: Logs in, then runs one step per stdin line ("create NAME", "complete"), timing each.
STEPS_SCRIPT = """
import json, sys, time
from clearml import Task

task = Task._create(project_name="relay/double", task_name="first")
print("READY " + task.id, flush=True)
for line in sys.stdin:
    step, _, arg = line.strip().partition(" ")
    start = time.monotonic()
    try:
        if step == "create":
            Task._create(project_name="relay/double", task_name=arg)
        elif step == "complete":
            task.mark_completed()
        outcome = "ok"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    print("STEP " + json.dumps({"step": step, "outcome": outcome, "s": time.monotonic() - start}), flush=True)
"""


class Child:
    """A Python child process running a script; its stdout lines are read with deadlines."""

    def __init__(self, script: str, *args: str, env: dict[str, str], workdir: Path) -> None:
        path = workdir / "child.py"
        path.write_text(script)
        self.proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next line starting with ``prefix``; fails at the deadline or at exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} line within {timeout}s:\n" + "\n".join(self.output)
                ) from None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"child exited before printing {prefix!r}:\n" + "\n".join(self.output))
            self.output.append(line)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def result(self, prefix: str, timeout: float) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.expect(prefix, timeout))
        return parsed

    def silent(self, prefix: str, seconds: float) -> None:
        """Assert that no line starting with ``prefix`` comes within ``seconds``."""
        with pytest.raises(AssertionError, match=r"no .* line within"):
            self.expect(prefix, seconds)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def server() -> Iterator[ClearMLServerDouble]:
    with ClearMLServerDouble() as double:
        yield double


@pytest.fixture
def spawn(server: ClearMLServerDouble, tmp_path: Path) -> Iterator[Any]:
    """Start SDK children online against ``server``; every child is killed at the end."""
    children: list[Child] = []

    def start(script: str, *args: str) -> Child:
        env = server.child_env()
        workdir = tmp_path / f"child{len(children)}"
        workdir.mkdir()
        child = Child(script, *args, env=env, workdir=workdir)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


def _raw_call(
    url: str, path: str, body: bytes = b"{}", method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request to the double without the SDK (http.client: no proxy settings apply)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _login(server: ClearMLServerDouble) -> str:
    basic = base64.b64encode(f"{server.access_key}:{server.secret_key}".encode()).decode()
    status, body = _raw_call(server.api_url, "/auth.login", headers={"Authorization": f"Basic {basic}"})
    assert status == 200
    token: str = json.loads(body)["data"]["token"]
    return token


# ------------------------------------------------------------------------------ the SDK online


@pytest.mark.slow
def test_task_create_online_arrives_complete(server: ClearMLServerDouble, spawn: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(work / "image.png")
    (work / "best.pt").write_bytes(os.urandom(4096))
    (work / "last.pt").write_bytes(os.urandom(1024))

    child = spawn(CREATE_SCRIPT, str(work))
    ids = child.result("RESULT", timeout=25)

    task = server.tasks[ids["task"]]
    assert task["name"] == "created"
    assert server.project_name(task["project"]) == "relay/double"
    assert task["type"] == "training"
    assert sorted(task["tags"]) == ["relay", "yolo"]
    general = task["hyperparams"]["General"]
    assert {k: v["value"] for k, v in general.items()} == {"lr": "0.01", "epochs": "3"}
    assert task["status"] == "completed"

    scalars = server.events(ids["task"], type="training_stats_scalar")
    losses = [(e["iter"], e["value"]) for e in scalars if e["metric"] == "train"]
    assert losses == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    (single,) = [e for e in scalars if e["metric"] == "Summary"]
    assert (single["variant"], single["value"], single["iter"]) == ("mAP50", 0.5, -(2**31))

    (image,) = server.events(ids["task"], type="training_debug_image")
    assert (image["metric"], image["variant"], image["iter"]) == ("Mosaic", "train_batch", 1)
    assert image["url"].startswith(server.files_url + "/")
    assert server.upload(image["url"]) == (work / "image.png").read_bytes()  # byte for byte

    (plot,) = server.events(ids["task"], type="plot")
    assert (plot["metric"], plot["variant"]) == ("curve", "PR")
    assert json.loads(plot["plot_str"])["data"][0]["y"] == [1, 0]
    assert [e["msg"] for e in server.events(ids["task"], type="log")] == ["hello console"]

    models = server.models
    outputs = {m["name"]: m["model"] for m in task["models"]["output"]}
    # The task lists output models under the weights file's stem, not the model's name: a
    # second model from a file of the same stem replaces the first on the task.
    assert outputs == {"last": ids["local"], "best": ids["uploaded"]}
    assert models[ids["local"]]["name"] == "kept-local"
    # Without an output_uri, ClearML registers the collector machine's local path, uploading nothing.
    assert models[ids["local"]]["uri"] == (work / "last.pt").as_uri()
    uploaded = models[ids["uploaded"]]
    assert uploaded["uri"].startswith(server.files_url + "/")
    assert server.upload(uploaded["uri"]) == (work / "best.pt").read_bytes()
    assert uploaded["task"] == ids["task"]
    assert uploaded["framework"] == "PyTorch"

    assert server.unhandled == []
    assert server.escapes == []


@pytest.mark.slow
def test_task_init_online_arrives_complete(server: ClearMLServerDouble, spawn: Any, tmp_path: Path) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(os.urandom(2048))

    child = spawn(INIT_SCRIPT, str(weights))
    task_id = child.result("RESULT", timeout=25)["task"]

    task = server.tasks[task_id]
    assert (task["name"], task["tags"], task["status"]) == ("initialised", ["Ultralytics"], "completed")
    assert server.project_name(task["project"]) == "relay/double"
    assert {k: v["value"] for k, v in task["hyperparams"]["General"].items()} == {"lr": "0.01", "epochs": "3"}
    assert task["script"]["entry_point"] == "child.py"
    assert "clearml" in task["script"]["requirements"]["pip"]
    assert task["output"]["destination"] == server.files_url
    scalars = server.events(task_id, type="training_stats_scalar")
    assert [(e["metric"], e["variant"], e["value"]) for e in scalars] == [("train", "box_loss", 0.5)]
    console = "".join(e["msg"] for e in server.events(task_id, type="log"))
    assert "hello from stdout" in console  # Task.init captures stdout

    ((name, model_id),) = [(m["name"], m["model"]) for m in task["models"]["output"]]
    assert name == "best"
    assert server.upload(server.models[model_id]["uri"]) == weights.read_bytes()
    assert server.unhandled == []
    # Task.init checks for a newer SDK at updates.clear.ml: the proxy trap refused it.
    assert {c.path for c in server.escapes} <= {"updates.clear.ml:443"}


@pytest.mark.slow
def test_reattach_script_comment_and_status_changes(
    server: ClearMLServerDouble, spawn: Any, tmp_path: Path
) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")

    result = spawn(REATTACH_SCRIPT, str(weights)).result("RESULT", timeout=25)

    assert result["name"] == "reattached"
    (comment,) = result["comments"]
    assert "clearml-relay run#7" in comment  # how the collector finds a model it registered
    assert result["statuses"] == ["in_progress", "stopped", "failed"]
    task = server.tasks[result["task"]]
    assert (task["status_reason"], task["status_message"]) == ("boom", "boom")
    assert task["comment"] == "clearml-relay run r1"
    assert (task["script"]["entry_point"], task["script"]["working_dir"]) == ("train.py", "/w")
    assert server.unhandled == []


# ------------------------------------------------------------------------------ faults, SDK


@pytest.mark.parametrize(("status", "delivered"), [(502, True), (500, False)])
@pytest.mark.slow
def test_failed_event_batch(server: ClearMLServerDouble, spawn: Any, status: int, delivered: bool) -> None:
    """502 is retried by the SDK's HTTP layer; a 500 on events.add_batch is logged and the events dropped."""
    server.fail("events.add_batch", status=status, times=2)

    task_id = spawn(EVENTS_SCRIPT).result("RESULT", timeout=25)["task"]

    statuses = [c.status for c in server.calls("events.add_batch")]
    values = [e["value"] for e in server.events(task_id)]
    if delivered:
        assert statuses == [status, status, 200]
        assert values == [0.0, 1.0, 2.0]
    else:
        assert statuses == [status]  # no retry, and nothing raised in the reporting process
        assert values == []


@pytest.mark.slow
def test_down_fails_a_fresh_process_fast_and_up_serves_again(server: ClearMLServerDouble, spawn: Any) -> None:
    api_url = server.api_url
    server.down()
    start = time.monotonic()
    child = spawn(STEPS_SCRIPT)
    child.proc.wait(timeout=20)
    elapsed = time.monotonic() - start
    assert child.proc.returncode != 0
    with pytest.raises(AssertionError, match="LoginError"):
        child.expect("READY", timeout=5)  # the output holds the traceback
    assert elapsed < 10  # measured about 3 s (interpreter + import + 2 capped retries)
    assert server.calls() == []

    server.up()
    assert server.api_url == api_url
    child = spawn(STEPS_SCRIPT)
    task_id = child.expect("READY", timeout=20)
    assert server.tasks[task_id]["name"] == "first"


@pytest.mark.slow
def test_down_mid_run_blocks_the_call_until_up(server: ClearMLServerDouble, spawn: Any) -> None:
    """Once logged in, the SDK retries a call on connection errors forever (capped retries or not)."""
    child = spawn(STEPS_SCRIPT)
    child.expect("READY", timeout=20)
    server.down()
    child.send("create second")
    child.silent("STEP", seconds=4)  # still retrying: only our own call timeout protects a caller
    server.up()
    step = child.result("STEP", timeout=15)
    assert step["outcome"] == "ok"
    assert server.task("second") is not None


@pytest.mark.slow
def test_bad_gateway_blocks_the_call_until_healed(server: ClearMLServerDouble, spawn: Any) -> None:
    """502 past the capped HTTP retries: InterfaceBase._send keeps retrying, the call never fails."""
    child = spawn(STEPS_SCRIPT)
    task_id = child.expect("READY", timeout=20)
    server.fail("tasks.completed", status=502)
    child.send("complete")
    server.wait_for(lambda s: len(s.calls("tasks.completed")) >= 4, timeout=15, what="more than 3 attempts")
    child.silent("STEP", seconds=1)
    server.heal()
    assert child.result("STEP", timeout=15)["outcome"] == "ok"
    assert server.tasks[task_id]["status"] == "completed"


@pytest.mark.slow
def test_stall_holds_a_call_until_unstall(server: ClearMLServerDouble, spawn: Any) -> None:
    child = spawn(STEPS_SCRIPT)
    task_id = child.expect("READY", timeout=20)
    server.stall("tasks.completed")
    child.send("complete")
    server.wait_for(lambda s: s.stalled == 1, timeout=10, what="tasks.completed to arrive and be held")
    child.silent("STEP", seconds=2)
    assert server.tasks[task_id]["status"] == "created"
    server.unstall()
    assert child.result("STEP", timeout=10)["outcome"] == "ok"
    assert server.tasks[task_id]["status"] == "completed"
    assert server.stalled == 0


# ------------------------------------------------------------------------------ the double itself


def test_calls_need_a_token_from_login(server: ClearMLServerDouble) -> None:
    status, _ = _raw_call(server.api_url, "/v2.23/tasks.get_all")
    assert status == 401
    basic = "Basic " + base64.b64encode(b"wrong:key").decode()
    status, _ = _raw_call(server.api_url, "/auth.login", headers={"Authorization": basic})
    assert status == 401


def test_unsupported_endpoint_is_answered_and_listed(server: ClearMLServerDouble) -> None:
    status, body = _raw_call(server.api_url, "/v2.23/queues.get_all", headers={"Authorization": "Bearer x"})
    assert status == 401  # authentication comes first
    token = _login(server)
    status, body = _raw_call(
        server.api_url, "/v2.23/queues.get_all", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 400
    assert json.loads(body)["meta"]["result_code"] == 400
    assert [c.endpoint for c in server.unhandled] == ["queues.get_all"]


def test_fail_counts_down_and_heal_clears(server: ClearMLServerDouble) -> None:
    server.fail("debug.*", status=503, times=2)
    server.fail("web.get")  # forever
    assert [_raw_call(server.api_url, "/debug.ping")[0] for _ in range(3)] == [503, 503, 401]
    assert [_raw_call(server.web_url, "/", method="GET")[0] for _ in range(2)] == [500, 500]
    server.heal()
    assert _raw_call(server.web_url, "/", method="GET")[0] == 200


@pytest.mark.slow
def test_slow_delays_answers(server: ClearMLServerDouble) -> None:
    server.slow(0.5, "auth.*")
    start = time.monotonic()
    _login(server)
    assert time.monotonic() - start >= 0.5
    server.slow(0)
    start = time.monotonic()
    _raw_call(server.web_url, "/", method="GET")
    assert time.monotonic() - start < 0.5


def test_down_refuses_and_up_listens_on_the_same_ports(server: ClearMLServerDouble) -> None:
    urls = (server.api_url, server.files_url, server.web_url)
    server.down()
    for url in urls:
        with pytest.raises(ConnectionRefusedError):
            _raw_call(url, "/debug.ping")
    server.up()
    assert (server.api_url, server.files_url, server.web_url) == urls
    assert _raw_call(server.web_url, "/", method="GET")[0] == 200


def test_down_cuts_a_stalled_call(server: ClearMLServerDouble) -> None:
    server.stall()
    with socket.create_connection(("127.0.0.1", int(server.web_url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        server.wait_for(lambda s: s.stalled == 1, timeout=5, what="the call to be held")
        server.down("web")
        assert sock.recv(1024) == b""  # closed unanswered
    assert server.stalled == 0


def test_fileserver_stores_multipart_and_raw_uploads(server: ClearMLServerDouble) -> None:
    boundary = "xyz"
    payload = bytes(range(256)) * 2 + b"\r\n--\r\n"  # line breaks and dashes inside the data
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="a/b.bin"; filename="a/b.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert _raw_call(server.files_url, "/proj/", body=form, headers=headers)[0] == 200
    assert _raw_call(server.files_url, "/raw/c.txt", body=b"hello", method="PUT")[0] == 200
    assert server.uploads == {"proj/a/b.bin": payload, "raw/c.txt": b"hello"}
    assert _raw_call(server.files_url, "/proj/a/b.bin", method="GET") == (200, payload)
    assert server.upload(f"{server.files_url}/raw/c.txt") == b"hello"
    assert _raw_call(server.files_url, "/missing", method="GET")[0] == 404
