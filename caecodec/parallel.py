"""Data-parallel training on CPU processes: every process computes a share of each batch, gradients are averaged.

Why processes rather than threads: the convolutions of a batch of eight 128-pixel crops gain little from a
second intra-op thread (1.0 s/step on one thread, 0.9 s on two), while half a batch on one thread takes
0.6 s; two processes each computing half the batch make the second core pay (docs/training.md).

The replicas stay bitwise identical without ever exchanging weights: they start from the same state, take
the leader's level and the same skip decisions (from averaged loss statistics), and apply the same averaged
gradient (gloo's allreduce hands every process the same sums). `check_in_sync` verifies it at every checkpoint.
"""

from __future__ import annotations

import socket
import zlib
from contextlib import contextmanager
from datetime import timedelta

import torch
from torch import distributed

# the leader evaluates on Kodak (minutes) while the others wait in their next collective
_COLLECTIVE_TIMEOUT = timedelta(hours=2)


class Replicas:
    """This process's place among the replicas of a run; with one process every operation is the identity."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def leader(self) -> bool:
        """The process that writes checkpoints and logs and evaluates."""
        return self.rank == 0

    def broadcast(self, value: int) -> int:
        """The leader's `value`, in every process."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        distributed.broadcast(tensor, src=0)
        return int(tensor.item())

    def mean(self, values: list[float]) -> list[float]:
        """The mean over the processes of each of `values`."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set in any process (a stop request reaches all of them at the same step)."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int64)
        distributed.all_reduce(tensor, op=distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def gather(self, value) -> list:
        """`value` of every process, in rank order (picklable objects)."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        distributed.all_gather_object(values, value)
        return values

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the processes: one allreduce of all of them, flattened."""
        if self.world == 1:
            return
        gradients = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in gradients])
        distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for gradient in gradients:
            gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
            offset += gradient.numel()

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise if the processes' copies of `module` differ in any bit (a broken replica must not train on)."""
        if self.world == 1:
            return
        digest = 0
        for tensor in module.state_dict().values():
            digest = zlib.crc32(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy(), digest)
        digests = self.gather(digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {digests} (expected all equal)")


def run(function, world: int, *args):
    """`function(replicas, *args)` in `world` processes: this one is the leader, the others are spawned.

    Returns the leader's result. A process that fails or is killed before finishing its share makes the
    collectives fail in the others (gloo reports the closed connection), so the whole run stops, with an error
    naming the process. One that fails after finishing its share, in the teardown of its process, leaves a
    complete run: that is a warning.
    """
    import multiprocessing

    address = f"tcp://127.0.0.1:{_free_port()}"
    context = multiprocessing.get_context("spawn")  # fork would copy the leader's torch threads mid-state
    threads = torch.get_num_threads()
    finished = [context.Event() for _ in range(1, world)]
    workers = [context.Process(target=_replica, args=(function, rank, world, address, threads, finished[rank - 1], args),
                               daemon=True)
               for rank in range(1, world)]
    for worker in workers:
        worker.start()
    try:
        with _process_group(0, world, address):
            result = function(Replicas(0, world), *args)
            # the leader's group holds the store the others talk to while they tear theirs down: it goes last
            failed = _failed(workers, finished)
    except RuntimeError as error:
        if failed := _failed(workers, finished):
            raise RuntimeError(f"data-parallel training stopped: {failed}; the run resumes from its last "
                               "checkpoint") from error
        raise
    if failed:
        raise RuntimeError(f"data-parallel training stopped: {failed}")
    return result


def _failed(workers, finished) -> str:
    """The spawned processes that ended in failure before finishing their share, as text ('' if none), once
    they have all ended; a warning for those that failed after it."""
    import warnings

    failures = []
    for rank, (worker, done) in enumerate(zip(workers, finished), 1):
        worker.join(timeout=60)
        if worker.exitcode == 0:
            continue
        ending = f"exited with code {worker.exitcode}" if worker.exitcode is not None else "had not exited 60 s later"
        if done.is_set():
            # seen twice in the test suite's runs (once in CI) as SIGABRT, "terminate called without an active
            # exception", after the process's last collective: its work, and every checkpoint, are complete and in sync
            warnings.warn(f"data-parallel process {rank} {ending} after finishing its share of the run, in its "
                          "teardown; the run is complete", RuntimeWarning, stacklevel=3)
        else:
            failures.append(f"process {rank} {ending}")
    return ", ".join(failures)


def _replica(function, rank: int, world: int, address: str, threads: int, finished, args) -> None:
    torch.set_num_threads(threads)
    with _process_group(rank, world, address):
        function(Replicas(rank, world), *args)
        finished.set()


@contextmanager
def _process_group(rank: int, world: int, address: str):
    distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                                   timeout=_COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
