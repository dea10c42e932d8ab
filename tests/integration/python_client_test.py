#!/usr/bin/env python3
"""A gRPC client written from the .proto files alone drives the service.

The client is Debian's python3-grpcio with stubs generated here by `protoc`
and `grpc_python_plugin` from proto/llamapro/v1/*.proto and
proto/grpc/health/v1/health.proto: nothing of llamapro's C++ (or of
llamaproctl) is used to talk to the coordinator. Against a real coordinator
(bearer token required) and one real worker it checks that:
  * the standard health service says SERVING;
  * a call without the token, or with a wrong one, is UNAUTHENTICATED;
  * SubmitJob creates an EXPAND job, and submitting again with the same
    request_id returns the same job;
  * WatchJob streams the job's events (sequence 1, 2, ...) until a terminal
    state, which is SUCCEEDED; GetJob and ListJobs agree; the expanded
    checkpoint exists;
  * ListWorkers shows the worker, with its pid and /metrics address.

Usage: python_client_test.py COORDINATOR WORKER LLAMAPROCTL PROTO_DIR
Exits 77 (skipped) when grpc / protobuf for python3, protoc or
grpc_python_plugin is missing (scripts/setup.sh installs them).

`Cluster` (a coordinator and one worker in a temporary data dir) is shared
with metrics_test.py; it needs nothing but the standard library.
"""
import ctypes
import glob
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def _die_with_parent():
    """In a child before exec: SIGTERM when this test dies (killed by a ctest timeout)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Cluster:
    """A coordinator (with a bearer token) and one worker, `w0`, in `tmp`."""

    def __init__(self, coordinator, worker, llamaproctl, tmp):
        self.coordinator_bin = coordinator
        self.worker_bin = worker
        self.ctl = llamaproctl
        self.tmp = tmp
        self.data_dir = os.path.join(tmp, "data")
        self.logs = os.path.join(tmp, "logs")
        self.token = secrets.token_hex(16)
        self.token_file = os.path.join(tmp, "token")
        self.procs = {}  # name -> Popen
        self.address = self.metrics_address = self.worker_metrics_address = None

    def _spawn(self, name, argv):
        os.makedirs(self.logs, exist_ok=True)
        with open(os.path.join(self.logs, name + ".log"), "wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                preexec_fn=_die_with_parent)

    def log_tail(self, name, lines=30):
        try:
            with open(os.path.join(self.logs, name + ".log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _wait_file(self, path, name, timeout=15.0):
        """Waits for `name` to write `path` (its address); returns the content."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    content = f.read().strip()
                if content:
                    return content
            rc = self.procs[name].poll()
            if rc is not None:
                raise AssertionError(f"{name} exited with {rc} before writing {path}:\n"
                                     f"{self.log_tail(name)}")
            time.sleep(0.05)
        raise AssertionError(f"{name} did not write {path} within {timeout} s:\n"
                             f"{self.log_tail(name)}")

    def start(self):
        os.makedirs(self.data_dir)
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        self._spawn("coordinator", [
            self.coordinator_bin, "--listen", "127.0.0.1:0",
            "--port-file", os.path.join(self.tmp, "coordinator.address"),
            "--metrics-listen", "127.0.0.1:0",
            "--metrics-port-file", os.path.join(self.tmp, "coordinator.metrics"),
            "--data-dir", self.data_dir, "--auth-token-file", self.token_file,
            "--heartbeat-timeout", "5"])
        self.address = self._wait_file(os.path.join(self.tmp, "coordinator.address"),
                                       "coordinator")
        self.metrics_address = self._wait_file(os.path.join(self.tmp, "coordinator.metrics"),
                                               "coordinator")
        self._spawn("w0", [
            self.worker_bin, "--coordinator", self.address, "--name", "w0",
            "--auth-token-file", self.token_file, "--metrics-listen", "127.0.0.1:0",
            "--port-file", os.path.join(self.tmp, "w0.metrics"),
            "--ready-file", os.path.join(self.tmp, "w0.ready")])
        self.worker_metrics_address = self._wait_file(os.path.join(self.tmp, "w0.metrics"), "w0")
        self._wait_file(os.path.join(self.tmp, "w0.ready"), "w0")

    def synth_base(self, rel="models/base", vocab=256):
        """A tiny random checkpoint at data_dir/rel (2 blocks, fp32)."""
        run([self.ctl, "synth", "--out", os.path.join(self.data_dir, rel), "--layers", "2",
             "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
             "--vocab", str(vocab), "--dtype", "f32", "--quiet"])

    def check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                     f"{self.log_tail(name)}")

    def stop(self):
        """Workers first, then the coordinator (as `llamaproctl up` does); SIGKILL after 10 s."""
        for name in sorted(self.procs, key=lambda n: n == "coordinator"):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"{name} ignored SIGTERM for 10 s; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()

    def dump_logs(self):
        for name in self.procs:
            print(f"--- {name} log (last lines) ---\n{self.log_tail(name)}", file=sys.stderr)


def run_with_cluster(binaries, prefix, checks):
    """Starts a Cluster of `binaries` (coordinator, worker, llamaproctl) in a
    temporary directory, runs checks(cluster, tmp), and stops it, dumping the
    daemons' logs when something failed. Returns 0 after printing PASS."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = Cluster(*binaries, tmp)
        ok = False
        try:
            cluster.start()
            checks(cluster, tmp)
            cluster.check_alive()
            ok = True
        finally:
            if not ok:
                cluster.dump_logs()
            cluster.stop()
    print(f"PASS ({time.monotonic() - started:.1f} s)")
    return 0


def run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def generate_stubs(proto_dir, out):
    """protoc + grpc_python_plugin into `out`; returns nothing, raises on failure.

    llamapro/v1/*.proto keep their package path (modules llamapro.v1.jobs_pb2,
    ...). health.proto is compiled from its own directory, into top-level
    modules health_pb2 / health_pb2_grpc: under its proto path it would be the
    Python package `grpc.health.v1`, which the real `grpc` package shadows.
    (The wire names come from the .proto `package`, grpc.health.v1, either way.)
    """
    plugin = "--plugin=protoc-gen-grpc_python=" + shutil.which("grpc_python_plugin")
    protoc = shutil.which("protoc")
    run([protoc, "-I" + proto_dir, "--python_out=" + out, plugin, "--grpc_python_out=" + out,
         *sorted(glob.glob(os.path.join(proto_dir, "llamapro", "v1", "*.proto")))])
    health_dir = os.path.join(proto_dir, "grpc", "health", "v1")
    run([protoc, "-I" + health_dir, "--python_out=" + out, plugin, "--grpc_python_out=" + out,
         os.path.join(health_dir, "health.proto")])


def expect_code(grpc, code, call, what):
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            raise AssertionError(f"{what}: expected {code.name}, got {e.code().name}: "
                                 f"{e.details()}")
        return e
    raise AssertionError(f"{what}: expected {code.name}, but the call succeeded")


def client_checks(cluster, stubs_dir):
    import grpc
    sys.path.insert(0, stubs_dir)
    import health_pb2
    import health_pb2_grpc
    from llamapro.v1 import jobs_pb2, jobs_pb2_grpc, workers_pb2, workers_pb2_grpc

    auth = [("authorization", "Bearer " + cluster.token)]
    with grpc.insecure_channel(cluster.address) as channel:
        # The standard health service (no token needed: load balancers probe it).
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health
        print("health: SERVING")

        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        workers = workers_pb2_grpc.WorkerServiceStub(channel)

        expect_code(grpc, grpc.StatusCode.UNAUTHENTICATED,
                    lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10),
                    "ListJobs without a token")
        expect_code(grpc, grpc.StatusCode.UNAUTHENTICATED,
                    lambda: workers.ListWorkers(workers_pb2.ListWorkersRequest(), timeout=10,
                                                metadata=[("authorization", "Bearer wrong")]),
                    "ListWorkers with a wrong token")
        print("no token / wrong token: UNAUTHENTICATED")
        expect_code(grpc, grpc.StatusCode.NOT_FOUND,
                    lambda: jobs.GetJob(jobs_pb2.GetJobRequest(id="job-999999"), timeout=10,
                                        metadata=auth),
                    "GetJob of an unknown id")

        request = jobs_pb2.SubmitJobRequest(
            spec=jobs_pb2.JobSpec(
                kind=jobs_pb2.JOB_KIND_EXPAND, name="grow",
                expand=jobs_pb2.ExpandJob(model="models/base", out="models/pro", add_blocks=2,
                                          verify=True)),
            request_id="python-client-" + secrets.token_hex(8))
        job = jobs.SubmitJob(request, timeout=30, metadata=auth)
        assert job.id, job
        again = jobs.SubmitJob(request, timeout=30, metadata=auth)
        assert again.id == job.id, (
            f"the same request_id created a second job: {job.id} then {again.id}")
        print(f"submitted job {job.id} (twice with request_id {request.request_id}: same id)")

        states, sequences = [], []
        for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), timeout=60,
                                   metadata=auth):
            assert event.job_id == job.id, event
            sequences.append(event.sequence)
            states.append(event.state)
            what = event.WhichOneof("event")
            print(f"  event {event.sequence}: {jobs_pb2.JobState.Name(event.state)} {what}: "
                  f"{getattr(event, what) if what != 'progress' else event.progress.step}")
        assert sequences == list(range(1, len(sequences) + 1)), (
            f"event sequences are not 1, 2, ...: {sequences}")
        assert states, "WatchJob sent no events"
        final = jobs_pb2.JobState.Name(states[-1])
        assert states[-1] == jobs_pb2.JOB_STATE_SUCCEEDED, (
            f"job {job.id} ended {final}, not SUCCEEDED:\n"
            f"{jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10, metadata=auth)}")
        terminal = {jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED,
                    jobs_pb2.JOB_STATE_CANCELLED}
        assert not any(s in terminal for s in states[:-1]), (
            f"events after a terminal state: {[jobs_pb2.JobState.Name(s) for s in states]}")
        print(f"watch: {len(states)} events, ended {final}")

        got = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10, metadata=auth)
        assert got.state == jobs_pb2.JOB_STATE_SUCCEEDED, got
        assert got.spec.kind == jobs_pb2.JOB_KIND_EXPAND, got
        assert got.spec.name == "grow" and got.spec.expand.add_blocks == 2, got
        assert got.request_id == request.request_id, got
        assert got.attempt == 1, got
        assert got.created.seconds > 0 and got.finished.seconds >= got.created.seconds, got
        print(f"get: {jobs_pb2.JobState.Name(got.state)}, attempt {got.attempt}")

        listed = jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10, metadata=auth)
        assert [j.id for j in listed.jobs] == [job.id], listed
        with open(os.path.join(cluster.data_dir, "models", "pro", "config.json")) as f:
            layers = json.load(f)["num_hidden_layers"]
        assert layers == 4, f"models/pro has {layers} blocks, not 2 + 2"

        response = workers.ListWorkers(workers_pb2.ListWorkersRequest(), timeout=10,
                                       metadata=auth)
        assert [w.name for w in response.workers] == ["w0"], response
        w = response.workers[0]
        assert w.state in (workers_pb2.WORKER_STATE_IDLE, workers_pb2.WORKER_STATE_BUSY), w
        assert w.device == "cpu", w
        assert w.pid == cluster.procs["w0"].pid, (w.pid, cluster.procs["w0"].pid)
        assert w.metrics_address == cluster.worker_metrics_address, (
            w.metrics_address, cluster.worker_metrics_address)
        print(f"workers: {w.name} {workers_pb2.WorkerState.Name(w.state)} pid {w.pid} "
              f"metrics {w.metrics_address}")
        return job.id


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    coordinator, worker, llamaproctl, proto_dir = sys.argv[1:]
    try:
        for module in ("grpc", "google.protobuf"):
            importlib.import_module(module)
    except ImportError as e:
        print(f"skipping: grpc / protobuf not importable by {sys.executable} ({e}); "
              "install python3-grpcio python3-protobuf (scripts/setup.sh)")
        return SKIP
    missing = [t for t in ("protoc", "grpc_python_plugin") if shutil.which(t) is None]
    if missing:
        print(f"skipping: {', '.join(missing)} not on PATH; install protobuf-compiler and "
              "protobuf-compiler-grpc (scripts/setup.sh)")
        return SKIP

    def checks(cluster, tmp):
        stubs = os.path.join(tmp, "stubs")
        os.makedirs(stubs)
        generate_stubs(proto_dir, stubs)
        cluster.synth_base()
        client_checks(cluster, stubs)

    return run_with_cluster((coordinator, worker, llamaproctl), "llamapro-pyclient-", checks)


if __name__ == "__main__":
    sys.exit(main())
