"""`python -m tunneler.demo` (as root): the private-LLM scenario, step by step, then teardown.

Prints the policy, the enrollments, `tunneler intercepts`, a `dig` of the LLM name, a proof
that the llm namespace refuses a direct connection, then a streamed chat completion through
the tunnel with curl and with the official openai client. Exits 0 only when every step worked
and nothing is left behind (namespaces, TUN, routes, files); interrupted, it still cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunneler.demo import netns
from tunneler.demo.clients import MODEL, OPENAI_SNIPPET
from tunneler.demo.scenario import (
    DNS_IP,
    EDGE_APP_IP,
    LLM_IP,
    LLM_NAME,
    LLM_PORT,
    LLM_URL,
    PYTHON,
    Scenario,
    signals_raise,
)
from tunneler.errors import DemoFailed, NetnsError

TOOLS = {"ip": "iproute2", "nft": "nftables", "dig": "dnsutils", "curl": "curl"}
PICTURE = f"""\
    app 198.18.10.1 ── {EDGE_APP_IP} edge 198.18.11.1 ── {LLM_IP} llm
    tunneler run        network serve (controller +    llm-stub :{LLM_PORT}, tunneler run-host,
    curl, openai        edge router), no forwarding    nftables: inbound dropped"""


def step(number: int, title: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {number}. {title}{plain}", flush=True)


def show(text: str, indent: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{indent}{line}")
    sys.stdout.flush()


def shown_run(ns: netns.Netns, cmd: list[str], *, expect_ok: bool = True,
              shown: str | None = None) -> str:
    """Run `cmd` in `ns`, print the command and its output; DemoFailed on a wrong outcome."""
    print(f"    [{ns.role}] $ {shown or ' '.join(cmd)}")
    result = ns.run(cmd, check=False, timeout=30)
    show(result.stdout + result.stderr, indent="      ")
    if (result.returncode == 0) != expect_ok:
        raise DemoFailed(f"{' '.join(cmd)} exited {result.returncode} in {ns.role}")
    return result.stdout


def stream_curl(scenario: Scenario) -> None:
    """curl a streamed completion by name; print each token with its arrival time."""
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Hello, private LLM"}]})
    cmd = ["curl", "-sSN", f"{LLM_URL}/chat/completions", "-H",
           "Content-Type: application/json", "-d", body]
    print(f"    [app] $ curl -sSN {LLM_URL}/chat/completions -H 'Content-Type: application/json'"
          f" -d '{body}'")
    start = time.monotonic()
    proc = scenario.app.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tokens = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        content = "" if payload == "[DONE]" else _content(payload)
        if content:
            tokens.append(content)
        print(f"      +{time.monotonic() - start:5.2f}s  "
              f"{'data: [DONE]' if payload == '[DONE]' else f'data: content={content!r}'}")
    if proc.wait(timeout=30) != 0 or not tokens:
        raise DemoFailed("curl got no streamed completion through the tunnel")
    print(f"    reply: {''.join(tokens)}")


def _content(payload: str) -> str:
    choices = json.loads(payload).get("choices") or [{}]
    return str(choices[0].get("delta", {}).get("content") or "")


def run_steps(scenario: Scenario) -> None:
    step(1, "Topology: three network namespaces joined by veth pairs")
    scenario.build_topology()
    show(PICTURE)
    print(f"    nftables ruleset in llm ({scenario.llm.name}):")
    show(scenario.llm.ruleset(), indent="      ")

    step(2, "The embedded network in edge, and the policy applied")
    policy = scenario.start_network()
    print("    policy.yaml (applied with `tunneler network apply`):")
    show(policy, indent="      ")

    step(3, "The private LLM endpoint in llm (tunneler llm-stub)")
    scenario.start_llm()
    shown_run(scenario.llm, ["curl", "-sS", f"http://127.0.0.1:{LLM_PORT}/v1/models"])

    step(4, "Proof: the llm namespace refuses a direct inbound connection")
    shown_run(scenario.edge, ["curl", "-sS", "--max-time", "3",
                              f"http://{LLM_IP}:{LLM_PORT}/v1/models"], expect_ok=False)
    shown_run(scenario.app, ["curl", "-sS", "--max-time", "3",
                             f"http://{LLM_IP}:{LLM_PORT}/v1/models"], expect_ok=False)

    step(5, "Enrollments (one-time tokens), run-host in llm dials out and binds the service")
    scenario.start_host()
    enrolled(scenario, "llm-host")
    show(_log_lines(scenario.log("run-host"), "host.service_bound"), indent="      ")

    step(6, "tunneler run in app: TUN device, routes, DNS, resolv.conf")
    print("    before: the app's resolver knows nothing of the LLM")
    shown_run(scenario.app, ["dig", "+noall", "+comments", LLM_NAME])
    scenario.start_app()
    enrolled(scenario, "laptop")
    print(f"    /etc/resolv.conf in app ({scenario.app.etc_file('resolv.conf')}):")
    show(scenario.app.etc_file("resolv.conf").read_text(), indent="      ")
    intercepts(scenario)

    step(7, f"dig {LLM_NAME}: our DNS answers with a virtual IP")
    answer = shown_run(scenario.app, ["dig", "+noall", "+answer", f"@{DNS_IP}", LLM_NAME])
    if "100." not in answer:
        raise DemoFailed(f"dig did not return a virtual IP for {LLM_NAME}")

    step(8, "A streamed chat completion through the tunnel, with curl")
    stream_curl(scenario)

    step(9, "The same with the official openai Python client (base URL is the only setting)")
    show(OPENAI_SNIPPET, indent="      | ")
    shown_run(scenario.app, [PYTHON, "-c", OPENAI_SNIPPET], shown='python -c "$SNIPPET"')
    print(f"    llm-stub counters: {scenario.stub_stats()}")
    intercepts(scenario)


def intercepts(scenario: Scenario) -> None:
    shown_run(scenario.app, [PYTHON, "-m", "tunneler", "intercepts", "--control-socket",
                             str(scenario.control_socket)],
              shown=f"tunneler intercepts --control-socket {scenario.control_socket}")


def enrolled(scenario: Scenario, identity: str) -> None:
    """One line about an identity file written by `tunneler enroll`."""
    path = scenario.dir / f"{identity}.json"
    data = json.loads(path.read_text())
    print(f"    enrolled {identity}: {path.name}, mode {path.stat().st_mode & 0o777:04o}, "
          f"controller {data.get('ztAPI')}, client certificate signed by the network CA")


def _log_lines(text: str, event: str) -> str:
    return "\n".join(line for line in text.splitlines() if event in line)


def teardown(scenario: Scenario) -> list[str]:
    """Stop everything (tunneler run first), delete it all; what is left (should be nothing)."""
    step(10, "Teardown")
    left: list[str] = []
    if "run" in scenario.procs:
        code = scenario.stop("run")
        print(f"    tunneler run exited {code}; resolv.conf in app is back to:")
        show(scenario.app.etc_file("resolv.conf").read_text(), indent="      ")
        left += [line for line in (scenario.app.ip("-o", "link", "show")
                                   + scenario.app.ip("route", "show")).splitlines()
                 if "tunneler0" in line]
        print("    TUN device and its routes: " + ("still there!" if left else "removed"))
    codes = scenario.close()
    if codes:
        print("    stopped: " + ", ".join(f"{name} (exit {code})" for name, code in codes.items()))
    left += scenario.leftovers()
    print("    left behind: " + (", ".join(left) if left else "nothing"))
    return left


def check_machine() -> None:
    if os.geteuid() != 0:
        raise DemoFailed("run as root (network namespaces, TUN devices): sudo make demo")
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise DemoFailed(f"missing tools: apt-get install {' '.join(missing)}")
    if not Path("/dev/net/tun").exists():
        raise DemoFailed("/dev/net/tun is missing (modprobe tun)")
    for name in netns.remove_stale(Path(tempfile.gettempdir())):
        print(f"removed {name}, left by a killed run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunneler.demo", description=__doc__)
    parser.add_argument("--token-delay", type=float, default=0.05,
                        help="seconds between streamed tokens (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        check_machine()
    except DemoFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix=f"{netns.WORKDIR_PREFIX}{os.getpid()}-"))
    scenario = Scenario(workdir, token_delay=args.token_delay,
                        echo=lambda line: print(f"    {line}"))
    failure: str | None = None
    with signals_raise():
        try:
            run_steps(scenario)
        except (DemoFailed, NetnsError, subprocess.SubprocessError, OSError) as exc:
            failure = str(exc)
            _print_logs(scenario)
        except KeyboardInterrupt:
            failure = "interrupted"
        finally:
            left = teardown(scenario)
    if failure or left:
        print(f"\ndemo FAILED: {failure or 'something was left behind'}", file=sys.stderr)
        return 1
    print(f"\ndemo OK in {time.monotonic() - started:.0f} s: a completion streamed through "
          "the tunnel from a namespace that accepts no inbound connection.")
    return 0


def _print_logs(scenario: Scenario) -> None:
    for name in ("network", "run-host", "run", "llm-stub"):
        text = scenario.log(name)
        if text:
            print(f"\n--- last lines of {name}.log ---", file=sys.stderr)
            print("\n".join(text.splitlines()[-15:]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
