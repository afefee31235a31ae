"""Bad input figure: malformed lab.yaml files and bad command lines each give exactly one line on
stderr, `labctl: error: …` naming the field or argument, exit 1 or 2, and never a traceback.
Hypothesis adds generated documents and bytes on top of the hand-written cases."""


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.cli.main import main
from labctl.errors import ConfigError
from labctl.lab.config import parse_lab
from tests.lab.test_config import INVALID
from tests.labenv import record_figure

EXTRA_FILES = [
    (b"\xff\xfe\x00garbage\x00\x01", "not UTF-8 text"),
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(64)), "contains NUL bytes"),
    (b"nodes: {worker: {count: 99999999999999999999999}}", "nodes.worker.count"),
    (b"nodes: {master: {memory: 1e400}}", "nodes.master.memory"),
    (b"networks: {nat: {cidr: 10.0.0.0/33}}", "networks.nat.cidr"),
    (b"networks: {nat: {cidr: ''}}", "networks.nat.cidr"),
    (b"networks: {nat: {cidr: [10.0.0.0/24]}}", "networks.nat.cidr"),
    (b"name: k8s\nname: k9s\n", "duplicate key 'name'"),
    (b"\t- not yaml: [", "YAML syntax error"),
    (b"&a [*a]", "expected a mapping of settings"),
    (b"image: {url: ftp://example/x.qcow2, sha256: abc}", "image"),
    (b"image: no-such-image", "image"),
]

# argv, expected exit code, a piece of the message that names the thing at fault
BAD_ARGS = [
    (["nosuch"], 2, "No such command 'nosuch'"),
    (["plan", "--output", "xml"], 2, "'--output'"),
    (["status", "-o", "yaml"], 2, "'--output'"),
    (["up", "--timeout", "0"], 2, "'--timeout'"),
    (["up", "--timeout", "soon"], 2, "'--timeout'"),
    (["plan", "--bogus"], 2, "No such option '--bogus'"),
    (["--config"], 2, "'--config' requires an argument"),
    (["--name", "Bad_Name", "plan"], 1, "name: expected a DNS-1123 label"),
    (["--name", "", "plan"], 1, "name: expected a DNS-1123 label"),
    (["--config", "/nonexistent/lab.yaml", "plan"], 1, "/nonexistent/lab.yaml: cannot read"),
    (["--config", "/", "plan"], 2, "'--config'"),
    (["init", "/nonexistent-dir/lab.yaml"], 1, "/nonexistent-dir/lab.yaml: cannot write"),
    (["image", "pull", "--url", "http://127.0.0.1:9/x.qcow2"], 2, "--url needs exactly one of"),
    (["image", "pull", "--sha512", "abc"], 2, "go with --url"),
    (["image", "rm", "no-such-image"], 1, "no-such-image"),
    (["drill", "lbb"], 2, "'lbb' is not one of 'lb', 'master', 'etcd-member'"),
    (["etcd", "snapshot", "restore", "/nonexistent/snap.db"], 2, "'/nonexistent/snap.db' does not exist"),
    (["etcd", "status", "-o", "yaml"], 2, "'--output'"),
]


def run_main(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean(code, err, fragment, expected_code=None):
    assert code in (1, 2) and (expected_code is None or code == expected_code), (code, err)
    assert err.count("\n") == 1 and err.startswith("labctl: error: "), err
    assert "Traceback" not in err
    assert fragment in err, err


FILES = [(text.encode(), message.split(":")[0]) for text, message in INVALID] + EXTRA_FILES


def bad_file_problem(text, fragment, tmp_path, capsys):
    """What is wrong with labctl's answer to ``text`` as lab.yaml (None: a clean one-line error)."""
    config = tmp_path / "lab.yaml"
    config.write_bytes(text)
    code, out, err = run_main(["--config", str(config), "plan"], capsys)
    return problem(code, out, err, fragment if fragment != "t" else str(config), 1)


def problem(code, out, err, fragment, expected_code):
    if code != expected_code:
        return f"exit {code}, not {expected_code}: {err!r}"
    if out or err.count("\n") != 1 or not err.startswith("labctl: error: ") or "Traceback" in err:
        return f"not one error line: {err!r}"
    return None if fragment in err else f"{fragment!r} not named: {err!r}"


GENERATED = {"documents": 0, "byte_strings": 0}


# --- generated: anything YAML can hold, and any bytes, is either a lab or one ConfigError line ---

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
keys = st.one_of(st.sampled_from(["name", "nodes", "master", "worker", "lb", "gateway", "count", "cpus",
                                  "memory", "disk", "networks", "nat", "internal", "cidr", "mode", "bridge",
                                  "kubernetes", "version", "pod_cidr", "image", "accel", "domain", "user"]),
                 st.text(max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_documents_never_escape_as_anything_but_config_error(document):
    import yaml

    GENERATED["documents"] += 1
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    try:
        parse_lab(text, "gen")
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_generated_bytes_never_escape_as_anything_but_config_error(data):
    GENERATED["byte_strings"] += 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        parse_lab(text, "gen")
    except ConfigError as err:
        assert "\n" not in str(err)


# Last in the file: the figure counts the generated examples the tests above ran.
def test_every_bad_lab_file_and_command_line_is_one_clean_error(tmp_path, capsys):
    """The figure is what was observed: each case run, each answer judged, nothing assumed."""
    found = {}
    for index, (text, fragment) in enumerate(FILES):
        found[f"file {index}: {text[:40]!r}"] = bad_file_problem(text, fragment, tmp_path, capsys)
    for argv, expected_code, fragment in BAD_ARGS:
        code, _, err = run_main(argv, capsys)
        found[f"argv {argv}"] = problem(code, "", err, fragment, expected_code)
    wrong = {case: why for case, why in found.items() if why}
    record_figure("bad_input", {"tried": len(found), "clean": len(found) - len(wrong),
                                "generated": dict(GENERATED)})
    assert wrong == {}
