"""Host pip settings reach image builds (index URLs, trusted hosts, proxies) but never land in an image: not in
`docker history --no-trunc`, not in its config. The proxy build args also exempt the local build server."""

import re
import shutil
import subprocess
import uuid

import docker
import pytest

from builders import images, rootfs

# a pip index / proxy setting as it would show in a layer's command or the image config
SETTING = re.compile(r"index-url|PIP_(EXTRA_)?INDEX_URL|PIP_PROXY|PIP_TRUSTED_HOST|trusted-host|https?_proxy=",
                     re.IGNORECASE)


def history(ref: str) -> str:
    proc = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def config_text(client, ref: str) -> str:
    attrs = client.images.get(ref).attrs
    return repr({k: attrs.get(k) for k in ("Config", "ContainerConfig", "Comment")})


@pytest.mark.parametrize("proxies, expected", [
    ({}, {}),
    ({"NO_PROXY": "corp.example"}, {"NO_PROXY": "corp.example"}),
    ({"HTTP_PROXY": "http://p:3128"}, {"HTTP_PROXY": "http://p:3128", "NO_PROXY": "127.0.0.1,localhost",
                                       "no_proxy": "127.0.0.1,localhost"}),
    ({"https_proxy": "http://p:3128", "no_proxy": "corp.example,localhost"},
     {"https_proxy": "http://p:3128", "no_proxy": "corp.example,localhost,127.0.0.1",
      "NO_PROXY": "127.0.0.1,localhost"}),
])
def test_proxies_never_route_the_local_build_server(proxies, expected):
    assert images.local_bypass(proxies) == expected


@pytest.mark.docker
@pytest.mark.fresh_store
def test_built_images_record_no_pip_index_or_proxy(base_image, docker_engine, pins):
    host_values = [v for v in images.build_args().values() if len(v) > 3]
    checked = []
    for name in [rootfs.NAME, *pins]:
        ref = images.image_tag(name, pins)
        try:
            docker_engine.images.get(ref)
        except docker.errors.ImageNotFound:
            continue  # not built on this machine yet: nothing to inspect
        text = history(ref) + config_text(docker_engine, ref)
        assert not SETTING.search(text), f"{ref}: {SETTING.search(text).group(0)} in its history/config"
        for value in host_values:
            assert value not in text, f"{ref}: this host's pip/proxy setting {value!r} is in its history/config"
        checked.append(name)
    assert "base" in checked, checked


@pytest.fixture
def probe_pins(tmp_path, monkeypatch, pins, docker_engine):
    """A throwaway image FROM base whose RUN step must see the host's pip index and proxy (set here to fake,
    unique values) and writes only whether it did."""
    d = tmp_path / "docker"
    shutil.copytree(images.DOCKER_DIR, d)
    monkeypatch.setattr(images, "DOCKER_DIR", d)
    token = uuid.uuid4().hex[:12]  # only in the host's settings, never in the Dockerfile
    (d / "probe.Dockerfile.j2").write_text(
        "FROM {{ parent }}\n{% include '_build-args.j2' %}\n"
        "RUN . /etc/buildmatrix/host-pip.sh"
        " && pip config list | grep -c \"^global.index.url='https://fake-index-\" > /etc/buildmatrix/probe-saw-index"
        " && [ -n \"$HTTPS_PROXY\" ] && echo 1 > /etc/buildmatrix/probe-saw-proxy\n"
        "RUN test -z \"$(ls /tmp/host-pip.* 2>/dev/null)\"\n")
    values = {"PIP_INDEX_URL": f"https://fake-index-{token}.invalid/simple/",
              "PIP_EXTRA_INDEX_URL": f"https://user:secret-{token}@extra-{token}.invalid/simple/",
              "PIP_TRUSTED_HOST": f"trusted-{token}.invalid",
              "HTTP_PROXY": f"http://fake-proxy-{token}.invalid:3128",
              "HTTPS_PROXY": f"http://fake-proxy-{token}.invalid:3128"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    probe = {**pins, "probe": {"from": "base", "token": uuid.uuid4().hex}}
    ref = images.image_tag("probe", probe)
    yield probe, ref, token
    try:
        docker_engine.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


@pytest.mark.docker
@pytest.mark.fresh_store
def test_a_fake_pip_index_and_proxy_reach_the_build_but_not_the_image(base_image, docker_engine, probe_pins):
    pins, ref, token = probe_pins
    info = images.ensure(["probe"], pins, log=lambda m: None)["probe"]
    assert info["ref"] == ref
    seen = docker_engine.containers.run(ref, ["cat", "/etc/buildmatrix/probe-saw-index",
                                              "/etc/buildmatrix/probe-saw-proxy"], remove=True, network_mode="none")
    assert seen.decode().split() == ["1", "1"], "the RUN step saw the host's pip index and its proxy"
    text = history(ref) + config_text(docker_engine, ref)
    assert "BUILDMATRIX_PIP_CONF=http://127.0.0.1:" in text, "the history shows only the one-time URL"
    assert token not in text, "no index, credential, trusted host or proxy value is in the history or config"
    assert not SETTING.search(text), SETTING.search(text).group(0)
