"""Hostile answers for the verifier fuzz test (tests/test_verifier.py) and benchmarks/reliability/fuzz_verifier.py.

`hostile_answers(sentinel_dir)` returns a deterministic list of strings a policy (or an attacker controlling one)
could emit: megabyte strings, deeply nested braces, power towers and huge factorials, invalid unicode, and strings
that try to import, evaluate or write files. Each payload that would create a file names one under `sentinel_dir`,
so a test can check that nothing was executed.
"""

from __future__ import annotations

import random

WRAPPERS = ("{}", "<think>x</think>{}", "${}$", "\\boxed{{{}}}", "<think>{}</think>\\boxed{{{}}}", "The answer is {}")


def _payloads(s: str) -> list[str]:
    """Python that, if evaluated, would create the file `s`."""
    return [
        f"__import__('os').system('touch {s}/a')",
        f"open('{s}/b', 'w').write('x')",
        f"eval(\"open('{s}/c','w')\")",
        f"exec('import os; os.system(\"touch {s}/d\")')",
        f"import os; os.system('touch {s}/e')",
        f"os.system('touch {s}/f')",
        f"subprocess.run(['touch', '{s}/g'])",
        f"(lambda: open('{s}/h', 'w'))()",
        f"getattr(getattr(globals()['__builtins__'], 'open'), '__call__')('{s}/i', 'w')",
        "().__class__.__bases__[0].__subclasses__()",
        f"compile('open(\"{s}/j\",\"w\")', 'x', 'exec')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {s}/k')",
        f"open('{s}/l','w')",
        f"exec(bytes.fromhex('{f'open(chr(47)+{s!r}[1:]+chr(47)+chr(109),chr(119))'.encode().hex()}').decode())",
        f"pathlib.Path('{s}/n').touch()",
        f"shutil.rmtree('{s}')",
        "breakpoint()",
        "input()",
        "exit(3)",
        "help()",
    ]


def _towers() -> list[str]:
    return ["9^9^9^9", "9**9**9**9", "9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "2^2^2^2^2^2^2^2", "(10^10)!",
            "1000000!", "99999999999!", "\\frac{9^{9^{9^9}}}{9^{9^{9^9}}}", "e^{e^{e^{e^{99}}}}",
            "\\sqrt{9^{9^{9^9}}}", "9^9^9^9 - 9^9^9^9", "\\binom{10^{10}}{10^9}", "\\prod_{k=1}^{10^{12}} k",
            "\\sum_{k=1}^{10^{15}} k^k", "10^{10^{100}} \\mod 7", "x^{x^{x^{x^{x}}}}=9^{9^{9}}",
            "\\lim_{n\\to\\infty} n^{n^n}", "\\int_0^{10^{10}} x^{x^x} dx",
            "\\left(1+\\frac{1}{10^{100}}\\right)^{10^{100}}"]


def _nested(rng: random.Random) -> list[str]:
    out = []
    for n in (50, 200, 1000, 5000):
        out += ["{" * n + "1" + "}" * n, "(" * n + "1" + ")" * n, "\\frac{" * n + "1" + "}{2}" * n,
                "\\sqrt{" * n + "2" + "}" * n, "{" * n, ")" * n, "[" * n + "]" * n, "\\left(" * n + "\\right)" * n,
                "$" * n, "\\" * n, "^" * n, "{}" * n]
    for _ in range(20):
        n = rng.randint(10, 3000)
        out.append("".join(rng.choice("{}()[]\\^_$") for _ in range(n)))
    return out


def _big() -> list[str]:
    mb = 2**20
    return ["9" * mb, "{" * mb, "x" * mb, "\\frac{1}{2}" * (mb // 11), "é" * mb, "\x00" * mb, "1+" * (mb // 2) + "1",
            "a" * (10 * mb)]


def _unicode(rng: random.Random) -> list[str]:
    out = ["\ud800", "\udfff", "4\ud8002", "\x00", "\x00\x01\x02", "\u202e24", "\u200b42\u200b", "\ufeff42", "４２",
           "٤٢", "߂", "𝟒𝟐", "\U0010ffff", "4\u03022", b"\xff\xfe42".decode("utf-8", "surrogateescape"),
           b"\xc3\x28".decode("utf-8", "surrogateescape"), "\r\n42\r\n", "\t" * 100, "\u0000" * 10 + "42"]
    for _ in range(60):
        out.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 40))))
    return out


def _random_latex(rng: random.Random) -> list[str]:
    atoms = ["\\frac{", "}{", "}", "\\sqrt{", "^", "_", "\\pi", "\\infty", "x", "1", "9", "0", "+", "-", "*", "/",
             "(", ")", "\\cdot", "\\left(", "\\right)", "=", ",", "\\le", "!", "\\boxed{", "\\text{", "e", "i", ".",
             "\\mathrm{", "\\,", "%", "\\$", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\dfrac{", "\\tan"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 60))) for _ in range(150)]


def hostile_answers(sentinel_dir: str, seed: int = 0) -> list[str]:
    """At least 2,000 hostile answers, deterministic in `seed`; payloads write only under `sentinel_dir`."""
    rng = random.Random(seed)
    cores = _payloads(sentinel_dir) + _towers() + _nested(rng) + _unicode(rng) + _random_latex(rng)
    out = [w.format(c, c) for c in cores for w in WRAPPERS]
    out += _big()
    return out
