"""The house's layering (issue 32): scripts are thin CLIs over library modules, and no script imports another
script, so each can change its flags and outputs alone. A script is a file with a `__main__` block."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ('.', 'benchmarks', 'faster-pytorch-fid', 'fid', 'models')


def modules():
    """{module name as imported: path} of every project .py file outside tests/ (top level: 'inpainting';
    in a folder: 'benchmarks.eval_inpainting', also importable as 'eval_inpainting' beside it)."""
    found = {}
    for folder in FOLDERS:
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith('.py'):
                path = os.path.normpath(os.path.join(ROOT, folder, name))
                found[name[:-3] if folder == '.' else f"{folder.replace('-', '_')}.{name[:-3]}"] = path
    return found


def is_script(path):
    with open(path) as f:
        return "if __name__ == '__main__':" in f.read()


def imported(path):
    """Names of every module `path` imports, at any depth (function-level imports included)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def script_imports(mods):
    scripts = {m for m, p in mods.items() if is_script(p)}
    scripts |= {m.split('.')[-1] for m in scripts}        # a benchmark beside another, by its bare name
    return {(os.path.relpath(p, ROOT), n) for m, p in mods.items() for n in imported(p) if n in scripts}


def test_the_scripts_are_found():
    scripts = {os.path.relpath(p, ROOT) for p in modules().values() if is_script(p)}
    assert {'inpainting.py', 'training_transformer.py', 'prepare_dataset.py', 'app.py',
            os.path.join('benchmarks', 'eval_inpainting.py')} <= scripts
    assert 'pipeline.py' not in scripts and 'training.py' not in scripts


def test_no_script_imports_a_script():
    assert script_imports(modules()) == set()


def test_a_script_importing_a_script_is_caught(tmp_path):
    """The check sees a function-level import of a script (what a lazy import would hide)."""
    bad = tmp_path / 'x.py'
    bad.write_text("def f():\n    from prepare_dataset import to_square_rgb\n")
    assert script_imports({**modules(), 'x': str(bad)}) == {(os.path.relpath(bad, ROOT), 'prepare_dataset')}
