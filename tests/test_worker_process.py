"""The real worker process: ``python -m clara_voice start`` against a loopback LiveKit peer.

Each test starts the service exactly as an operator would (its own process group, a
scratch working directory so no ``.env`` is read, JSON logs on stdout) and watches what an
operator or LiveKit would see: the log lines, the health endpoint, the protocol messages
the worker sends, and its exit code. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

from livekit import api
from livekit.protocol import agent

from clara_voice.agent.agent import CONNECT_FAILED_MESSAGE
from testkit.loopback_livekit import TERMINAL_JOB_STATUSES, LoopbackLiveKit
from testkit.worker import (
    API_KEY,
    API_SECRET,
    DRAIN_BOUND,
    STARTUP_TIMEOUT,
    STEP_TIMEOUT,
    WRONG_SECRET,
    assert_clean_output,
    exists,
    free_port,
    is_event,
    running_worker,
    worker_env,
)
from tests.metrics_writer_proc import metrics_writers


async def test_room_connection_failure_is_one_critical_line_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(url=peer.url, api_secret=API_SECRET, http_port=free_port())
        async with running_worker(env, tmp_path) as worker:
            connection = await worker.alongside(
                peer.wait_registered(timeout=STARTUP_TIMEOUT), "registering with the peer"
            )
            assert connection.register is not None
            assert connection.register.type == agent.JobType.JT_ROOM
            await worker.wait_line(is_event("registered worker"), "saying it registered")
            assert await worker.health() == (200, "OK")  # before any job

            # first job: hold the room signalling so the job is seen while it connects
            peer.rtc_gate.clear()
            job = await worker.alongside(
                peer.offer_job("clara-room-1", timeout=STEP_TIMEOUT), "answering a job offer"
            )
            assert job.assigned, f"the worker declined the job: {job.answer}"
            assert job.answer.participant_identity
            await worker.alongside(
                peer.wait_for(lambda: peer.rtc_refusals, timeout=STEP_TIMEOUT),
                "the job connecting to its room",
            )
            await worker.alongside(
                peer.wait_job_status(job.id, [agent.JobStatus.JS_RUNNING], STEP_TIMEOUT),
                "the job reported as running",
            )
            assert await worker.health() == (200, "OK")  # during the job
            # one Prometheus endpoint: livekit's worker metrics and the job processes' own
            status, exposition = await worker.metrics()
            assert status == 200, exposition
            assert "\nlk_agents_active_job_count{" in exposition
            assert "\nclara_agent_unhealthy 0.0\n" in exposition
            assert '\nclara_errors_total{source="provider"}' in exposition
            # the job process joins with the token of the assignment, at the assigned URL
            claims = api.TokenVerifier(API_KEY, API_SECRET).verify(peer.rtc_refusals[0].token or "")
            assert claims.identity == job.answer.participant_identity
            assert claims.video is not None
            assert claims.video.room == job.room
            peer.rtc_gate.set()

            failed = await worker.wait_line(
                is_event(CONNECT_FAILED_MESSAGE, "critical"), "saying the room connection failed"
            )
            assert failed["job_id"] == job.id
            assert failed["room"] == job.room
            ended = await worker.alongside(
                peer.wait_job_ended(job.id, timeout=STEP_TIMEOUT), "the job reported as ended"
            )
            assert ended.status in TERMINAL_JOB_STATUSES
            assert await worker.health() == (200, "OK")  # after the job

            # still registered on the same connection, and it takes the next job
            assert peer.current_connection() is connection
            second = await worker.alongside(
                peer.offer_job("clara-room-2", timeout=STEP_TIMEOUT), "answering a second offer"
            )
            assert second.assigned, f"the worker declined a second job: {second.answer}"
            failed_again = await worker.wait_line(
                lambda line: (
                    is_event(CONNECT_FAILED_MESSAGE, "critical")(line)
                    and line.get("job_id") == second.id
                ),
                "saying the second room connection failed",
            )
            assert failed_again["room"] == second.room
            await worker.alongside(
                peer.wait_job_ended(second.id, timeout=STEP_TIMEOUT),
                "the second job reported as ended",
            )
            assert await worker.health() == (200, "OK")
            assert len(peer.connections) == 1  # never had to reconnect
            assert peer.auth_rejections == []

            # one critical line per failed job, none for anything else
            criticals = worker.find(lambda line: line["level"] == "critical")
            assert [line["job_id"] for line in criticals] == [job.id, second.id]

            code, took = await worker.terminate()
            assert code == 0, worker.tail()
            assert took < DRAIN_BOUND
            assert await worker.wait_group_gone() == [], "job processes outlived the worker"
            assert_clean_output(worker, API_SECRET, job.token, second.token)
            folder = worker.find(is_event("metrics folder ready"))[0]["path"]
            assert not exists(folder), "the worker left its metrics folder behind"


async def test_an_agent_in_trouble_stops_new_jobs_and_never_fails_the_health_endpoint(
    tmp_path: Path,
) -> None:
    """Regression: one loop stall or a backed-up outbox in any job turned the worker's health
    endpoint to 503, so an orchestrator restarted it and every live call dropped. Now the
    endpoint stays 200 and the worker declines new jobs (livekit's load mechanism) until
    the agent is fine again."""
    folder = tmp_path / "prometheus"  # an operator's PROMETHEUS_MULTIPROC_DIR
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(
            url=peer.url,
            api_secret=API_SECRET,
            http_port=free_port(),
            PROMETHEUS_MULTIPROC_DIR=str(folder),
        )
        async with running_worker(env, tmp_path) as worker:
            await worker.alongside(
                peer.wait_registered(timeout=STARTUP_TIMEOUT), "registering with the peer"
            )
            await worker.wait_line(is_event("registered worker"), "saying it registered")
            assert await worker.health() == (200, "OK")

            # a process writing into the worker's folder, as a job process whose agent
            # failed its health check does; it then ends without taking it back (a crash)
            async with metrics_writers(folder, {"unhealthy": True}) as (job_process,):
                turned = await worker.wait_line(
                    is_event("worker takes no new jobs: agents fail their health check", "warning"),
                    "taking no new jobs",
                )
                assert turned["unhealthy_agents"] == 1
                assert await worker.health() == (200, "OK")  # the process is fine
                declined = await worker.alongside(
                    peer.offer_job("clara-room-busy", timeout=STEP_TIMEOUT), "a job offer"
                )
                assert not declined.answer.available
                said = await worker.wait_line(
                    lambda line: str(line.get("event", "")).startswith("room job declined"),
                    "saying why it declined the job",
                )
                assert "agent(s) fail their health check" in said["event"]
                assert (said["room"], said["reason"]) == ("clara-room-busy", "full")
                _, exposition = await worker.metrics()
                assert "\nclara_agent_unhealthy 1.0\n" in exposition
                assert 'clara_jobs_declined_total{reason="full"} 1.0' in exposition
                assert "\nclara_worker_load 1.0" in exposition
                since = len(worker.lines)
                await job_process.stop()

            await worker.wait_line(
                is_event("agents pass their health check again, the worker takes new jobs"),
                "taking jobs again after the process ended",
                since=since,
            )
            peer.rtc_gate.clear()  # hold the job's room connection: only the answer matters
            accepted = await worker.alongside(
                peer.offer_job("clara-room-free", timeout=STEP_TIMEOUT), "a job offer"
            )
            assert accepted.answer.available
            peer.rtc_gate.set()
            assert await worker.health() == (200, "OK")
            code, _ = await worker.terminate()
            assert code == 0, worker.tail()
            assert exists(folder)  # an operator's folder stays
            assert_clean_output(worker, API_SECRET)


async def test_unreachable_livekit_url_says_so_in_one_line_and_gives_up(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    env = worker_env(
        url=url, api_secret=API_SECRET, http_port=free_port(), CLARA_LIVEKIT_MAX_RETRY="1"
    )
    async with running_worker(env, tmp_path) as worker:
        warning = await worker.wait_line(
            lambda line: line["level"] == "warning" and url in line["event"],
            f"warning that {url} cannot be reached",
            timeout=STARTUP_TIMEOUT,
        )
        assert "cannot reach the LiveKit server" in warning["event"]
        assert "set LIVEKIT_URL" in warning["event"]
        assert "\n" not in warning["event"]

        gave_up = await worker.wait_line(
            lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
            "giving up",
        )
        assert url in gave_up["event"]
        assert await worker.wait_exit(DRAIN_BOUND) == 1
        assert_clean_output(worker, API_SECRET)


async def test_health_answers_503_while_the_livekit_url_is_unreachable(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    # livekit waits min(2 * retry, 10) s before retry number ``retry + 1``: with one retry
    # (the other test) it waits 0 s, so there is no time to ask; with two the second
    # retry waits 2 s, and the health is asked then
    env = worker_env(
        url=url, api_secret=API_SECRET, http_port=free_port(), CLARA_LIVEKIT_MAX_RETRY="2"
    )
    async with running_worker(env, tmp_path) as worker:
        await worker.wait_line(
            lambda line: line["level"] == "warning" and url in line["event"],
            "warning about the first failed attempt",
            timeout=STARTUP_TIMEOUT,
        )
        retrying = await worker.wait_line(
            lambda line: line["level"] == "warning" and "retrying in 2s" in line["event"],
            "announcing a retry in 2s",
        )
        assert "set LIVEKIT_URL" in retrying["event"]
        for _ in range(3):
            status, body = await worker.health()
            assert status == 503, body
        await worker.wait_line(
            lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
            "giving up",
        )
        assert await worker.wait_exit(DRAIN_BOUND) == 1
        assert_clean_output(worker, API_SECRET)


async def test_rejected_credentials_name_the_key_variables(tmp_path: Path) -> None:
    async with LoopbackLiveKit(api_key=API_KEY, api_secret=API_SECRET) as peer:
        env = worker_env(
            url=peer.url,
            api_secret=WRONG_SECRET,
            http_port=free_port(),
            CLARA_LIVEKIT_MAX_RETRY="2",
        )
        async with running_worker(env, tmp_path) as worker:
            warning = await worker.wait_line(
                lambda line: line["level"] == "warning" and peer.url in line["event"],
                "warning that the credentials were rejected",
                timeout=STARTUP_TIMEOUT,
            )
            assert "rejected the worker's credentials" in warning["event"]
            assert "LIVEKIT_API_KEY" in warning["event"]
            assert "LIVEKIT_API_SECRET" in warning["event"]
            assert peer.auth_rejections, "the peer saw no rejected connection"
            assert {rejection.status for rejection in peer.auth_rejections} == {401}

            await worker.wait_line(
                lambda line: line["level"] == "warning" and "retrying in 2s" in line["event"],
                "announcing a retry in 2s",
            )
            status, body = await worker.health()
            assert status == 503, body

            gave_up = await worker.wait_line(
                lambda line: line["level"] == "critical" and line["event"].startswith("giving up"),
                "giving up",
            )
            assert "LIVEKIT_API_KEY" in gave_up["event"]  # the advice names the real problem
            assert len(peer.auth_rejections) == 3  # CLARA_LIVEKIT_MAX_RETRY=2 → 3 attempts
            assert "after 3 attempts" in gave_up["event"]
            assert await worker.wait_exit(DRAIN_BOUND) == 1
            assert not peer.registered.is_set()
            assert peer.received == []
            assert_clean_output(worker, API_SECRET, WRONG_SECRET)
