"""Evaluation sharded over Ray workers (``pip install 'robustedit[ray]'``).

Each worker is a Ray actor that builds one editor on one model from an `EditorSpec` (names, not
tensors) and keeps it; the driver hands out chunks of cases and yields their records as chunks
finish. `run_evaluation` stays the only writer of ``records.jsonl``, so a sharded run resumes like
a local one, and since every case is seeded from (seed, case id) alone (`seed_case`), its records
equal an unsharded run's except for timing and line order.

A chunk's records are yielded only when its task returns, all at once: a worker lost mid-chunk
(process killed, node lost) loses nothing but that chunk, which goes back to the queue and is
picked up by the next free worker while a replacement worker starts. So every case is yielded
exactly once. Ray is imported only when an evaluator is made, so it stays an optional extra.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from robustedit.editors.settings import get_editor, resolve_editor
from robustedit.errors import UserError
from robustedit.eval.runner import EvalOptions, LocalEvaluator
from robustedit.models.load import load_seeded

if TYPE_CHECKING:
    from robustedit.data import Case

log = logging.getLogger(__name__)

# Settings a worker needs to read the same caches and model files as the driver. A worker of a
# Ray started before the driver changed them (or on another node) would not see them otherwise.
FORWARDED_ENV = ("XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
FORWARDED_PREFIX = "ROBUSTEDIT_"


@dataclasses.dataclass(frozen=True)
class EditorSpec:
    """Everything needed to rebuild the same editor on the same model in another process
    (an evaluation worker): names and options only, no tensors."""

    editor: str
    model: str = "smollm2"
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    def check(self):
        """The editor class and its validated config, without loading the model."""
        return resolve_editor(self.editor, self.model, self.config_file, self.sets)

    def build(self):
        """Load the model and build the editor; returns (editor, resolved config as a dict)."""
        self.check()  # a bad setting fails before the model loads
        lm = load_seeded(self.model, self.dtype, self.device, self.seed)
        editor = get_editor(self.editor, lm, config=self.config_file, sets=self.sets)
        return editor, editor.settings()


def import_ray():
    """The ``ray`` module, or the one-line `UserError` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("evaluating with workers needs Ray, which is not installed: "
                        "pip install 'robustedit[ray]'") from None
    return ray


# Ray forwards a worker's output to the driver line by line: its progress bars would be
# interleaved with the driver's (which already counts finished cases), as the CLI's own are not.
QUIET_WORKER_ENV = {"ROBUSTEDIT_QUIET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def worker_env() -> dict[str, str]:
    """The driver's robustedit / Hugging Face settings, with the workers' progress bars off."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX) or k in FORWARDED_ENV}
    return env | QUIET_WORKER_ENV


def lost_worker_errors(ray) -> tuple[type[BaseException], ...]:
    """What ``ray.get`` raises when a task's worker is gone rather than the task failing:
    ``RayActorError`` (its ``ActorDiedError`` when the process is killed or its node lost,
    ``ActorUnavailableError``), and for completeness the errors of lost workers, nodes and results."""
    x = ray.exceptions
    return (x.RayActorError, x.WorkerCrashedError, x.NodeDiedError, x.ObjectLostError, x.OutOfMemoryError)


def check_worker_gpus(worker_gpus: float) -> float:
    """GPUs per worker as Ray accepts them: 0, a fraction of one GPU (workers share it), or a whole
    number (Ray refuses 1.5)."""
    if not worker_gpus >= 0:
        raise UserError(f"--worker-gpus must be at least 0, not {worker_gpus:g}")
    if worker_gpus > 1 and worker_gpus != int(worker_gpus):
        raise UserError(f"--worker-gpus above 1 must be a whole number of GPUs, not {worker_gpus:g}")
    return worker_gpus


def chunked(cases: list[Case], size: int) -> list[list[Case]]:
    return [cases[i:i + size] for i in range(0, len(cases), size)]


class EvalWorker:
    """The state of one Ray actor: an editor built on the first call and kept for every chunk
    (loading the model and preparing the editor costs far more than evaluating a case)."""

    def __init__(self, spec: EditorSpec, options: EvalOptions, threads: int):
        self.spec, self.options, self.threads = spec, options, threads
        self.evaluator: LocalEvaluator | None = None

    def setup(self) -> int:
        """Build and prepare the editor once; returns this process's id (to watch or kill it)."""
        if self.evaluator is None:
            import torch

            torch.set_num_threads(self.threads)
            editor, _ = self.spec.build()
            evaluator = LocalEvaluator(editor, self.options)
            evaluator.prepare()
            self.evaluator = evaluator
        return os.getpid()

    def evaluate(self, cases: list[Case]) -> list[dict]:
        self.setup()
        return list(self.evaluator.records(cases))


@dataclass
class _Worker:
    actor: object
    pid: int | None = None  # known once its setup returned


@dataclass
class _Chunk:
    cases: list[Case]
    losses: int = 0  # times its worker was lost while evaluating it


class RayEvaluator:
    """Evaluates cases on ``workers`` Ray actors, each with its own model and editor.

    ``address=None`` uses the Ray already initialised in this process, else starts a local one
    (shut down again by `close`); ``"host:port"`` or ``"auto"`` connects to a running cluster
    (every node must see the model and, to share statistics, the cache directory). Each worker
    reserves ``threads`` CPUs and runs torch on that many threads, and ``worker_gpus`` GPUs (Ray's
    ``num_gpus``: a fraction puts several workers on one GPU; Ray sets each worker's
    ``CUDA_VISIBLE_DEVICES``, so the spec's ``device="cuda"`` is the worker's own GPU). Cases go
    out in chunks of ``chunk_size``, one chunk per worker at a time: a chunk takes seconds, the
    round trip milliseconds, so a second queued chunk would hide nothing and only unbalance the
    tail. A chunk whose worker is lost is evaluated again, at most ``max_retries`` times.

    Use it as a context manager (or call `close`); `records` also closes when it ends, fails or is
    interrupted, so no actor outlives the run.
    """

    def __init__(self, spec: EditorSpec, options: EvalOptions, workers: int, address: str | None = None,
                 threads: int = 1, chunk_size: int = 1, max_retries: int = 3, worker_gpus: float = 0):
        if workers < 1 or threads < 1 or chunk_size < 1 or max_retries < 0:
            raise UserError("workers, threads and chunk size must be at least 1, max retries at least 0")
        self.worker_gpus = check_worker_gpus(worker_gpus)
        self._ray = import_ray()
        self.spec, self.options, self.workers, self.address = spec, options, workers, address
        self.threads, self.chunk_size, self.max_retries = threads, chunk_size, max_retries
        self._pool: list[_Worker] = []
        self._started_ray = False
        self.retries = 0  # chunks evaluated again after their worker was lost

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self) -> None:
        """Start the workers, ready to evaluate. The first prepares alone, so statistics missing
        from the disk cache are computed once; the others then read them from the cache."""
        if self._pool:
            return
        self.spec.check()  # a mistake in the editor's settings fails here, before Ray starts
        try:
            self._connect()
            self._start(1)
            self._start(self.workers - 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill the workers, and shut down the Ray this evaluator started (idempotent)."""
        ray, pool, self._pool = self._ray, self._pool, []
        for worker in pool:
            self._kill(worker)
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def worker_pids(self) -> list[int]:
        """Process ids of the workers that are ready (to watch them, or kill one in a test)."""
        return [w.pid for w in self._pool if w.pid is not None]

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            self._init_ray()
            self._started_ray = True
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.workers * self.threads:
            log.warning("the Ray cluster has %g CPUs: %d workers × %d threads will wait for more",
                        cpus, self.workers, self.threads)
        self._check_gpus(ray.cluster_resources().get("GPU", 0))

    def _check_gpus(self, gpus: float) -> None:
        """Workers that ask for more GPUs than the cluster has would wait for ever (their start is
        awaited): refused on a Ray this evaluator started, whose GPUs are all it will ever have; a
        warning on a cluster, which may add nodes."""
        needed = self.workers * self.worker_gpus
        if gpus >= needed:
            return
        message = (f"{self.workers} workers × {self.worker_gpus:g} GPUs need {needed:g} GPUs; "
                   f"the Ray cluster has {gpus:g}")
        if self._started_ray:
            raise UserError(message + " (fewer --workers, a fraction per worker, or a cluster with more GPUs)")
        log.warning("%s: the workers will wait for more", message)

    def _init_ray(self) -> None:
        """Start a local Ray sized for the workers, or connect to ``address``; quietly (Ray's own
        warnings at startup are about its cluster, not about this run)."""
        quiet = dict(logging_level=logging.ERROR, include_dashboard=False)
        if self.address is None:
            self._ray.init(num_cpus=self.workers * self.threads, **quiet)
            return
        try:
            self._ray.init(address=self.address, **quiet)
        except ConnectionError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"could not connect to the Ray cluster at {self.address!r}: {first}") from None

    def _spawn(self) -> _Worker:
        gpus = {"num_gpus": self.worker_gpus} if self.worker_gpus else {}
        remote = self._ray.remote(EvalWorker).options(
            num_cpus=self.threads, max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": worker_env()}, **gpus)
        worker = _Worker(remote.remote(self.spec, self.options, self.threads))
        self._pool.append(worker)
        return worker

    def _start(self, n: int) -> None:
        """Spawn ``n`` workers and wait until each has built and prepared its editor."""
        workers = [self._spawn() for _ in range(n)]
        refs = [w.actor.setup.remote() for w in workers]
        for worker, ref in zip(workers, refs):
            try:
                worker.pid = self._get(ref)
            except lost_worker_errors(self._ray) as e:
                raise RuntimeError(f"a Ray worker was lost while starting: {e}") from e

    def _kill(self, worker: _Worker) -> None:
        try:
            self._ray.kill(worker.actor, no_restart=True)
        except Exception:  # already dead, or Ray already shut down: nothing left to stop
            pass

    def _get(self, ref):
        """``ray.get``, with a worker's `UserError` raised again here as itself: its message is
        the user's to read, without Ray's remote traceback around it."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise UserError(str(e.cause)) from None
            raise

    # -- scheduling --------------------------------------------------------------------------

    def records(self, cases: list[Case]) -> Iterator[dict]:
        """Records of ``cases`` as their chunks finish; the workers are closed at the end."""
        try:
            if cases:
                self.prepare()
            yield from self._schedule(cases)
        finally:
            self.close()

    # Measured reason to keep this scheduler rather than ray.util.ActorPool over actors with
    # max_restarts=-1, max_task_retries=-1 (benchmarks/ray_pool.py): both yield each case once with
    # equal records, but Ray re-runs a lost chunk only on the restarted actor, after its __init__
    # (model load + editor build), while free workers idle: 24 tiny cases, one worker killed,
    # 5.4–5.6 s vs 2.3–3.2 s (the same without a kill, or with 160 cases queued). And retries here
    # stop after max_retries naming the cases; Ray's either never stop or fail without saying which.
    def _schedule(self, cases: list[Case]) -> Iterator[dict]:
        queue = deque(_Chunk(c) for c in chunked(cases, self.chunk_size))
        idle = list(self._pool)
        running: dict[object, tuple[_Worker, _Chunk | None]] = {}  # ref → worker, chunk (None: setup)
        lost, lost_starts = lost_worker_errors(self._ray), 0
        while queue or any(chunk is not None for _, chunk in running.values()):
            self._dispatch(queue, idle, running)
            [ref], _ = self._ray.wait(list(running), num_returns=1)
            worker, chunk = running.pop(ref)
            try:
                result = self._get(ref)
            except lost as e:
                self._forget(worker)
                if chunk is None:
                    lost_starts += 1
                    self._check_starts(lost_starts, e)
                else:
                    queue.appendleft(self._retry(chunk, e))
                replacement = self._spawn()  # starts meanwhile; the chunk goes to whichever worker is free first
                running[replacement.actor.setup.remote()] = (replacement, None)
                continue
            idle.append(worker)
            if chunk is None:
                worker.pid, lost_starts = result, 0
            else:
                self._dispatch(queue, idle, running)  # the worker goes on while its records are written
                yield from result

    @staticmethod
    def _dispatch(queue: deque[_Chunk], idle: list[_Worker], running: dict) -> None:
        """Give each idle worker the next chunk, one at a time."""
        while queue and idle:
            worker, chunk = idle.pop(), queue.popleft()
            running[worker.actor.evaluate.remote(chunk.cases)] = (worker, chunk)

    def _forget(self, worker: _Worker) -> None:
        self._kill(worker)
        self._pool.remove(worker)

    def _retry(self, chunk: _Chunk, error: Exception) -> _Chunk:
        """``chunk`` again, after its worker was lost; an error once it was lost too often."""
        chunk.losses += 1
        ids = ", ".join(c.case_id for c in chunk.cases)
        if chunk.losses > self.max_retries:
            raise RuntimeError(f"the Ray worker evaluating cases {ids} was lost {chunk.losses} times "
                               f"(max_retries={self.max_retries}); last error: {error}") from error
        log.warning("a Ray worker was lost (%s); evaluating cases %s again", type(error).__name__, ids)
        self.retries += 1
        return chunk

    def _check_starts(self, lost_starts: int, error: Exception) -> None:
        """Replacements lost while starting cost no case, but must not be replaced forever."""
        if lost_starts > self.max_retries:
            raise RuntimeError(f"{lost_starts} replacement Ray workers in a row were lost while starting "
                               f"(max_retries={self.max_retries}); last error: {error}") from error
        log.warning("a replacement Ray worker was lost while starting (%s)", type(error).__name__)
