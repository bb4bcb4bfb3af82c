"""Run many command lines of the project's CLIs, each in its own process, paying the torch +
detectron2 import once.

``python tests/cli_batch.py JOBS.json RESULTS.json``: JOBS is a list of ``{"module", "argv",
"cwd"}``; this process imports the modules, then forks one child per job. The child is a real
process with its own stdout/stderr (files) and exit status; it calls the module's ``main()``
with ``sys.argv`` set, exactly what the console script (``ugs-train = ugs_d2.train:main``)
does, and exits the way the interpreter does: ``SystemExit(str)`` prints the message and exits
1, ``SystemExit(int)`` exits with that code, any other exception prints its traceback and exits
1. RESULTS is a list of ``{"rc", "stdout", "stderr"}`` in job order.

Use :func:`run_batch` from a test.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback


def _child(module, argv, cwd, out_path, err_path):
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.chdir(cwd)
    code = 0
    try:
        sys.argv = [module] + list(argv)
        importlib.import_module(module).main()
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    jobs_file, results_file = sys.argv[1:3]
    with open(jobs_file) as f:
        jobs = json.load(f)
    for module in {j["module"] for j in jobs}:
        importlib.import_module(module)
    import detectron2.data  # noqa: F401  (what the training jobs import anyway)

    results = []
    workdir = tempfile.mkdtemp(prefix="cli_batch.")
    for i, job in enumerate(jobs):
        out_path, err_path = os.path.join(workdir, f"{i}.out"), os.path.join(workdir, f"{i}.err")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job["module"], job["argv"], job["cwd"], out_path, err_path)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        with open(out_path, errors="replace") as f_out, open(err_path, errors="replace") as f_err:
            results.append({"rc": rc, "stdout": f_out.read(), "stderr": f_err.read()})
    with open(results_file, "w") as f:
        json.dump(results, f)
    shutil.rmtree(workdir, ignore_errors=True)


def run_batch(jobs, timeout=900):
    """``jobs``: (module, argv, cwd) triples -> list of ``subprocess.CompletedProcess``-like
    objects (``returncode``, ``stdout``, ``stderr``), one per job, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs_file, results_file = os.path.join(tmp, "jobs.json"), os.path.join(tmp, "results.json")
        with open(jobs_file, "w") as f:
            json.dump([{"module": m, "argv": [str(a) for a in argv], "cwd": str(cwd)} for m, argv, cwd in jobs], f)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), jobs_file, results_file],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cli_batch failed ({proc.returncode}): {proc.stderr[-3000:]}")
        with open(results_file) as f:
            results = json.load(f)
    return [subprocess.CompletedProcess(j[1], r["rc"], r["stdout"], r["stderr"]) for j, r in zip(jobs, results)]


if __name__ == "__main__":
    main()
