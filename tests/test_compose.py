"""compose.yaml: the image the Containerfile builds (its default, torch target), the bundle volume, the port, the
health check and the command, each as the Containerfile says them; the command's options are ``fbml serve``'s."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from fbml.cli import build_parser

from test_container import CONTAINERFILE, ROOT, _args, _instructions, _named

COMPOSE = ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def service() -> dict:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert list(services) == ["fbml"]
    return services["fbml"]


@pytest.fixture(scope="module")
def runtime() -> list[tuple[str, str]]:
    return _named(_instructions(CONTAINERFILE.read_text(encoding="utf-8")), "runtime")


def test_it_builds_the_containerfiles_default_target(service: dict) -> None:
    assert service["build"]["dockerfile"] == CONTAINERFILE.name and (ROOT / service["build"]["context"]).resolve() == ROOT
    assert "target" not in service["build"]  # the last stage: runtime


def test_the_port_is_the_one_exposed_and_served(service: dict, runtime: list[tuple[str, str]]) -> None:
    (exposed,) = _args(runtime, "EXPOSE")
    published = [str(port).rsplit(":", 1)[-1] for port in service["ports"]]
    assert published == [exposed]
    command = service["command"]
    assert command[command.index("--port") + 1] == exposed


def test_the_bundle_volume_is_the_images_volume_read_only(service: dict, runtime: list[tuple[str, str]]) -> None:
    (volume,) = _args(runtime, "VOLUME")
    (mount,) = service["volumes"]
    assert [mount["target"]] == json.loads(volume) and mount["read_only"] is True
    assert mount["target"] in service["command"]


def test_the_health_check_is_the_containerfiles(service: dict, runtime: list[tuple[str, str]]) -> None:
    (healthcheck,) = _args(runtime, "HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", healthcheck))
    assert ["CMD", *json.loads(healthcheck.split("CMD", 1)[1])] == service["healthcheck"]["test"]
    assert "/health/ready" in service["healthcheck"]["test"][-1]
    for option, key in [("interval", "interval"), ("timeout", "timeout"), ("start-period", "start_period"), ("retries", "retries")]:
        assert str(service["healthcheck"][key]) == options[option], option


def test_the_command_is_the_images_with_fbml_serve_options(service: dict, runtime: list[tuple[str, str]]) -> None:
    (cmd,) = _args(runtime, "CMD")
    command = service["command"]
    assert command[: len(json.loads(cmd))] == json.loads(cmd)
    args = build_parser().parse_args(command[1:])
    assert args.grace < float(service["stop_grace_period"].removesuffix("s"))  # drained before the runtime kills it
    assert service["stop_signal"] == "SIGTERM"
