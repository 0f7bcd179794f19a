"""Decoding lanes (one decoder at a time until the model waits for one) and the prompt
handovers of the interpreter lock while a run's threads share it."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath

import numpy as np
import pytest

from featviz.inputs.discover import ImageSource
from featviz.inputs.loaded import LoadedImage
from featviz.run.handovers import SWITCH_INTERVAL, prompt_handovers
from featviz.run.lanes import Lanes
from featviz.run.pipeline import Pipeline, PipelineConfig
from featviz.sinks.results import ImageResult

WAIT = 10  # seconds a barrier waits before the test fails


class _Overlap:
    """Calls that note how many of them run at once, and in which order they started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.started: list[int] = []

    def __call__(self, number: int) -> int:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(number)
        threading.Event().wait(0.002)  # long enough for another lane to start, were there one
        with self.lock:
            self.now -= 1
        return number * 10


def test_one_lane_runs_the_calls_one_at_a_time_in_order() -> None:
    calls = _Overlap()
    with ThreadPoolExecutor(4) as pool:
        lanes = Lanes(pool, most=4)
        futures = [lanes.submit(calls, number) for number in range(30)]
        assert [future.result(WAIT) for future in futures] == [n * 10 for n in range(30)]
    assert calls.most == 1
    assert calls.started == list(range(30))


def test_widening_runs_that_many_calls_at_once_and_no_more_than_the_most() -> None:
    barrier = threading.Barrier(3, timeout=WAIT)  # broken unless three calls run at once
    with ThreadPoolExecutor(4) as pool:
        lanes = Lanes(pool, most=3)
        for _ in range(5):
            lanes.widen()
        assert lanes.lanes == 3
        futures = [lanes.submit(lambda _: barrier.wait(), None) for _ in range(3)]
        assert sorted(future.result(WAIT) for future in futures) == [0, 1, 2]


def test_a_call_cancelled_before_it_starts_never_runs_and_errors_reach_the_caller() -> None:
    release, ran = threading.Event(), []

    def first(_: object) -> str:
        release.wait(WAIT)
        raise ValueError("bad bytes")

    with ThreadPoolExecutor(2) as pool:
        lanes = Lanes(pool, most=2)
        blocked = lanes.submit(first, None)
        queued = lanes.submit(ran.append, "second")
        assert queued.cancel()
        release.set()
        with pytest.raises(ValueError, match="bad bytes"):
            blocked.result(WAIT)
        after = lanes.submit(ran.append, "third")
        after.result(WAIT)
    assert ran == ["third"]


class _WaitedForJob:
    """A job whose fifth and sixth images decode only side by side: the run ends only if
    the model's wait for the fifth (its first batch run) opened a second lane."""

    def __init__(self) -> None:
        self.together = threading.Barrier(2, timeout=WAIT)

    def finished(self, source: ImageSource) -> None:
        return None

    def load(self, source: ImageSource) -> LoadedImage:
        if int(source.display) in (4, 5):
            self.together.wait()
        return LoadedImage(source, np.zeros(1), np.zeros((3, 4, 4)))

    def assemble(self, batch: list[LoadedImage]) -> None:
        return None

    def process(self, batch: list[LoadedImage], inputs: None) -> list[ImageResult]:
        return [ImageResult(item.source) for item in batch]


def test_a_model_waiting_for_a_decode_opens_another_lane() -> None:
    sources = [
        ImageSource(path=Path(f"/nowhere/{n}"), relative=PurePath(str(n)), display=str(n))
        for n in range(8)
    ]
    pipeline = Pipeline(_WaitedForJob(), sources, PipelineConfig(batch_size=2, decode_workers=2))
    results = list(pipeline.results())
    assert sorted(int(result.source.display) for result in results) == list(range(8))
    assert not [result.error for result in results if result.error]
    assert pipeline.decoder.lanes == 2


def test_handovers_are_prompt_while_runs_last_then_the_interval_is_back() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        with prompt_handovers():
            assert sys.getswitchinterval() == SWITCH_INTERVAL
            with prompt_handovers():  # a second run, in another thread in real use
                assert sys.getswitchinterval() == SWITCH_INTERVAL
            assert sys.getswitchinterval() == SWITCH_INTERVAL  # the first still runs
        assert sys.getswitchinterval() == 0.004
        sys.setswitchinterval(SWITCH_INTERVAL / 4)  # a process that asked for quicker keeps it
        quicker = sys.getswitchinterval()
        with prompt_handovers():
            assert sys.getswitchinterval() == quicker
        assert sys.getswitchinterval() == quicker
    finally:
        sys.setswitchinterval(before)
