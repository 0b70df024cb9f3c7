"""Log lines: JSON off a terminal, context bound per task and kept out of sibling tasks."""

import asyncio
import io
import json

import structlog

from transport import logs


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_context_is_bound_per_task():
    out = io.StringIO()
    logs.configure(stream=out)
    log = structlog.get_logger("test")

    async def flow(corr: str) -> None:
        logs.bind(corr=corr)
        await asyncio.sleep(0)
        log.info("stage done", stage="enroll")

    await asyncio.gather(asyncio.create_task(flow("r-1")), asyncio.create_task(flow("r-2")))
    log.info("outside")
    got = lines(out)
    assert sorted(line.get("corr") for line in got[:2]) == ["r-1", "r-2"]
    assert all(line["stage"] == "enroll" and line["level"] == "info" for line in got[:2])
    assert "corr" not in got[2]
    assert got[2]["timestamp"].endswith("Z")


def test_console_output_on_a_terminal():
    out = Tty()
    logs.configure(stream=out)
    structlog.get_logger("test").warning("node unreachable", node="n1")
    text = out.getvalue()
    assert "node unreachable" in text and "n1" in text
    assert not text.lstrip().startswith("{")


def test_level_filters():
    out = io.StringIO()
    logs.configure(stream=out, level="warning")
    log = structlog.get_logger("test")
    log.info("hidden")
    log.error("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]
