"""Run snippets in a SandboxPool of this process's own, for tests whose failure could hurt the host.

tests/test_sandbox.py starts this script inside a safety net of its own (a fresh pid namespace via
`unshare`, plus an address-space rlimit), so a sandbox regression (a fork bomb that forks, `kill(-1, 9)` that
kills, a memory bomb that allocates) fails the test instead of taking the machine down.

    python netted_pool.py '{"use_bwrap": true, "memory_mb": 256, "jobs": [["code", "expr"], ...]}'

"{POOL_PID}" in a job's code is replaced by this process's pid (the pool's). Prints one JSON object:
{"results": [[ok, value, stdout, error], ...], "health": [ok, value, error], "protection": {...}}.
"""

import json
import os
import sys

from echochamber.sandbox import CodeJob, SandboxConfig, SandboxPool


def main() -> None:
    spec = json.loads(sys.argv[1])
    cfg = SandboxConfig(workers=1, timeout_s=spec.get("timeout_s", 2.0), memory_mb=spec.get("memory_mb", 256),
                        use_bwrap=spec["use_bwrap"], grace_s=3.0)
    pid = str(os.getpid())
    jobs = [CodeJob(code.replace("{POOL_PID}", pid), expr) for code, expr in spec["jobs"]]
    with SandboxPool(cfg) as pool:
        results = pool.run_many(jobs)
        health = pool.run(CodeJob("def simple_math_problem():\n    return 6 * 7\n", "simple_math_problem()"))
        out = {"results": [[r.ok, r.value, r.stdout, r.error] for r in results],
               "health": [health.ok, health.value, health.error], "protection": pool.protection}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
