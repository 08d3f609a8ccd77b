"""A worker with workers.media_thread: RTP on a pjmedia thread of its own.

The other live modules run the default, RTP on the worker's event loop.
Needs root for the network namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.b2bua_lab import B2buaLab, read_reports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns")


SUBNET = 12


@pytest.fixture(scope="module")
def media_thread_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B2buaLab]:
    lab = B2buaLab(tmp_path_factory.mktemp("media_thread"), subnet=SUBNET,
                   workers=1, config={"workers": {
                       "count": 1, "sip_port_base": 5100, "media_thread": True}})
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def test_media_thread_worker_bridges(media_thread_lab: B2buaLab, tmp_path: Path) -> None:
    # workers.media_thread moves RTP to a pjmedia thread. Calls must still
    # bridge media both ways, as they do on the event loop.
    (status,) = media_thread_lab.worker_status()
    threads = {(task / "comm").read_text().strip()
               for task in Path(f"/proc/{status['pid']}/task").iterdir()}
    assert "media" in threads, threads
    report_file = tmp_path / "answer.jsonl"
    answer = media_thread_lab.start_answer(5090, report_file, "--no-ice", "--calls", "1")
    code, report = media_thread_lab.dial("91234", "--duration", "2")
    answer.wait(15)
    assert code == 0, report
    assert report["ice"] is not None and report["ice"]["state"] == "completed"
    assert report["rtp"]["rx_packets"] > 50, "caller heard nothing from the target"
    (target_call,) = read_reports(report_file)
    assert target_call["rtp"]["rx_packets"] > 50, "target heard nothing"
