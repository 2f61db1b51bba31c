"""Toolchain images: content tags (no Docker needed), real builds through the docker SDK, what images record."""

import copy
import re
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from builders import images, rootfs
from builders.errors import EXIT_USAGE, MatrixError, NoDockerEngine, ToolchainError

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"^buildmatrix/[a-z0-9_-]+:[0-9a-f]{12}$")


def tags(pins) -> dict:
    return {n: images.image_tag(n, pins) for n in (rootfs.NAME, "base", "gguf")}


@pytest.fixture
def no_docker(monkeypatch):
    """Any attempt to reach an engine fails loudly."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    def refuse():
        raise AssertionError("image_tag must not need Docker")

    monkeypatch.setattr(images, "client", refuse)


@pytest.fixture
def docker_dir(tmp_path, monkeypatch):
    """A copy of docker/ that a test may add templates to (same content -> same tags as the real one)."""
    d = tmp_path / "docker"
    shutil.copytree(images.DOCKER_DIR, d)
    monkeypatch.setattr(images, "DOCKER_DIR", d)
    return d


# -- tags: no Docker -----------------------------------------------------------------------------------
def test_tag_is_deterministic_and_computed_without_docker(pins, no_docker):
    first = tags(pins)
    assert first == tags(copy.deepcopy(pins))
    assert all(TAG.match(t) for t in first.values()), first
    assert len(set(first.values())) == 3


def test_changed_pin_changes_the_tag_of_the_image_and_its_children(pins, no_docker):
    before = tags(pins)
    bumped = copy.deepcopy(pins)
    bumped["base"]["pip"]["transformers"] = "5.22.0"
    after = tags(bumped)
    assert after[rootfs.NAME] == before[rootfs.NAME]
    assert after["base"] != before["base"]
    assert after["gguf"] != before["gguf"], "a child's tag follows its parent's (FROM)"

    gguf_only = copy.deepcopy(pins)
    gguf_only["gguf"]["llama_cpp_python"] = "0.3.35"
    after = tags(gguf_only)
    assert (after["base"], after["gguf"] != before["gguf"]) == (before["base"], True)

    suite = copy.deepcopy(pins)
    suite["base"]["suite"] = "trixie"
    after = tags(suite)
    assert after[rootfs.NAME] != before[rootfs.NAME] and after["base"] != before["base"]


def test_context_files_are_part_of_the_tag(pins, no_docker, docker_dir):
    before = tags(pins)
    lock = docker_dir / "base.context" / "base.lock.txt"
    lock.write_text(lock.read_text() + "tqdm==4.70.1\n")
    after = tags(pins)
    assert after["base"] != before["base"] and after["gguf"] != before["gguf"]
    (docker_dir / "write-tools.py").write_text((docker_dir / "write-tools.py").read_text() + "\n# changed\n")
    assert tags(pins)["base"] != after["base"]


def test_host_trust_configuration_is_not_part_of_the_tag(pins, no_docker, monkeypatch, tmp_path):
    before = tags(pins)
    ca = tmp_path / "corporate-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot the host's\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(ca))
    assert images.host_ca() == ca, "the CA bundle pip is told to trust is the one passed into builds"
    monkeypatch.setattr(images, "HOST_WHEELS", tmp_path / "no-wheels")
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi-proxy.example/simple")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert tags(pins) == before


def test_build_args_pass_what_a_container_can_use_and_drop_host_paths(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://idx.example/simple\n"
                    "extra-index-url = file:///opt/pypi/simple\n  https://mirror.example/simple\n"
                    "find-links = /opt/wheels\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                    "trusted-host = idx.example\n[install]\nretries = 7\n")
    env = {"PIP_FIND_LINKS": "/opt/wheels", "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
           "PIP_DEFAULT_TIMEOUT": "180", "HTTPS_PROXY": "http://proxy.example:3128", "PIP_RETRIES": "3",
           "HOME": "/root"}
    assert images.build_args(env, [conf, tmp_path / "missing.conf"]) == {
        "HTTPS_PROXY": "http://proxy.example:3128",
        "PIP_DEFAULT_TIMEOUT": "180",
        "PIP_EXTRA_INDEX_URL": "https://mirror.example/simple",
        "PIP_INDEX_URL": "https://idx.example/simple",
        "PIP_RETRIES": "3",  # the environment wins over pip.conf
        "PIP_TRUSTED_HOST": "idx.example",
    }
    only_local = tmp_path / "local.conf"
    only_local.write_text("[global]\nextra-index-url = file:///opt/pypi/simple\n")
    assert images.build_args({}, [only_local]) == {}


def test_rendered_dockerfiles_pin_every_tool(pins, no_docker):
    base = images.render("base", pins)
    for pkg, ver in pins["base"]["pip"].items():
        assert f'"{pkg}=={ver}' in base, pkg
    assert '"torch==2.13.0+cpu"' in base, "the CPU build, never PyPI's CUDA torch"
    assert f"FROM {images.image_tag(rootfs.NAME, pins)}\n" in base
    gguf = images.render("gguf", pins)
    assert f'"llama-cpp-python=={pins["gguf"]["llama_cpp_python"]}"' in gguf
    assert f"FROM {images.image_tag('base', pins)}\n" in gguf
    for text in (base, gguf):
        assert "latest" not in text and "/opt/wheels" not in text
    assert "PIP_CERT=/etc/buildmatrix/host-ca.crt" in base, "pip trusts the host's CA bundle (corporate proxies)"


def test_missing_pin_or_template_is_a_one_line_matrix_error(pins, no_docker):
    broken = copy.deepcopy(pins)
    del broken["gguf"]["llama_cpp_python"]
    with pytest.raises(MatrixError) as e:
        images.image_tag("gguf", broken)
    assert "matrix.yaml images.gguf" in str(e.value) and "llama_cpp_python" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(MatrixError, match=r"images.nosuch: no template docker/nosuch.Dockerfile.j2"):
        images.image_tag("nosuch", {**pins, "nosuch": {"from": "base"}})
    with pytest.raises(MatrixError, match=r"no entry 'gone'"):
        images.build_order(["gone"], pins)


def test_host_requirements_match_the_base_image_pins(pins):
    req = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            req[name.lower().replace("_", "-")] = ver
    assert req["torch"].endswith("+cpu"), "the host gets the CPU torch, like the image"
    for pkg, ver in pins["base"]["pip"].items():
        got = req.get(pkg.lower(), "").split("+")[0]
        assert got == str(ver), f"requirements.txt {pkg}=={got}, matrix.yaml images.base.pip.{pkg}: {ver}"


def test_no_engine_is_a_one_line_toolchain_error(monkeypatch, pins):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ToolchainError) as e:
        images.ensure(["base"], pins)
    assert "no Docker engine reachable" in str(e.value) and "scripts/setup.sh" in str(e.value)
    assert "\n" not in str(e.value)
    # its own class (the build stops on it instead of failing one image's nodes), exit code 2
    assert isinstance(e.value, NoDockerEngine) and e.value.exit_code == EXIT_USAGE == 2


# -- real builds ---------------------------------------------------------------------------------------
@pytest.mark.docker
def test_base_image_records_its_pinned_tools(base_image, pins):
    assert base_image["ref"] == images.image_tag("base", pins)
    assert base_image["id"].startswith("sha256:")
    tools = base_image["tools"]
    assert tools["image"] == "base"
    assert tools["debian"]["suite"] == pins["base"]["suite"]
    assert tools["python"].startswith("3.11.")
    assert tools["pip"]["torch"] == f"{pins['base']['pip']['torch']}+cpu"
    for pkg, ver in pins["base"]["pip"].items():
        assert tools["pip"][pkg].split("+")[0] == str(ver), pkg


def _probe(docker_dir: Path, pins: dict, body: str) -> dict:
    (docker_dir / "probe.Dockerfile.j2").write_text("FROM {{ parent }}\n" + body)
    return {**pins, "probe": {"from": "base", "token": uuid.uuid4().hex}}


@pytest.fixture
def remove_images(docker_engine):
    refs = []
    yield refs
    for ref in refs:
        try:
            docker_engine.images.remove(ref, force=True)
        except Exception:  # never built
            pass


@pytest.mark.docker
def test_ensure_builds_what_is_missing_once_then_does_no_work(base_image, docker_dir, docker_engine, remove_images,
                                                            pins):
    pins = _probe(docker_dir, pins,
                  'RUN echo "{{ pins.token }}" > /etc/buildmatrix/probe-token'
                  " && python /etc/buildmatrix/write-tools.py probe\n")
    ref = images.image_tag("probe", pins)
    remove_images.append(ref)
    built_before = len(images.BUILT)
    results = []
    threads = [threading.Thread(target=lambda: results.append(images.ensure(["probe"], pins, log=lambda m: None)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert images.BUILT[built_before:] == [ref], "two concurrent ensure() calls build the missing image once"
    assert results[0] == results[1]
    info = results[0]["probe"]
    assert info["tools"]["image"] == "probe" and info["ref"] == ref
    assert docker_engine.images.get(ref).labels["buildmatrix.image"] == "probe"

    again = images.ensure(["probe", "base"], pins, log=lambda m: pytest.fail(f"no work expected, got: {m}"))
    assert images.BUILT[built_before:] == [ref], "a warm ensure() builds nothing"
    assert again["probe"]["id"] == info["id"] and again["base"]["id"] == base_image["id"]


@pytest.mark.docker
def test_failed_build_is_one_line_naming_the_log_tail(base_image, docker_dir, remove_images, pins):
    pins = _probe(docker_dir, pins, "RUN echo probe-diagnostic-{{ pins.token }} && exit 3\n")
    remove_images.append(images.image_tag("probe", pins))
    with pytest.raises(ToolchainError) as e:
        images.ensure(["probe"], pins, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and re.match(r"building image 'probe' failed: Step 2/\d+ exited with code 3; ", msg), msg
    tail = Path(re.search(r"last lines: (\S+\.tail)", msg).group(1))
    assert f"probe-diagnostic-{pins['probe']['token']}" in tail.read_text()


@pytest.mark.docker
def test_gguf_image_has_pinned_llama_cpp_and_its_converter(docker_engine, pins):
    info = images.ensure(["gguf"], pins)["gguf"]
    tools = info["tools"]
    assert tools["llama_cpp_python"] == pins["gguf"]["llama_cpp_python"]
    assert tools["pip"]["llama-cpp-python"] == pins["gguf"]["llama_cpp_python"]
    commit = tools["llama_cpp"]["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and tools["llama_cpp"]["ggml_version"]
    script = ("import gguf, llama_cpp, shutil, subprocess, sys; llama_cpp.llama_backend_init(); "
              "print(gguf.GGUF_VERSION, llama_cpp.__version__, shutil.which('gcc'), shutil.which('cmake')); "
              "sys.exit(subprocess.call([sys.executable, '/opt/llama.cpp/convert_hf_to_gguf.py', '--help'], "
              "stdout=subprocess.DEVNULL))")
    out = docker_engine.containers.run(info["ref"], ["python", "-c", script], remove=True, network_mode="none")
    assert out.decode().split() == ["3", pins["gguf"]["llama_cpp_python"], "None", "None"], \
        "gguf-py and llama_cpp import, the converter runs, no compilers are left in the image"
