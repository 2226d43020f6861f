# Run once, silently, in every kernel right after it starts.
#
# A figure the cell saved itself (fig.savefig / plt.savefig) is closed at the end of the
# cell, so the inline backend does not display it again: the user asked for a file, and
# returning the same chart twice would be noise. Figures never saved are displayed (and
# the server saves those as figure-<n>.png). The hook is registered before matplotlib's
# own end-of-cell flush, so it runs first.
def __ci_setup():
    import functools
    import importlib.abc
    import importlib.util
    import sys

    def patch(module):
        figure = module.Figure
        if getattr(figure.savefig, "_ci_marks", False):
            return
        original = figure.savefig

        # wraps() keeps the name pyplot checks when it wraps Figure.savefig.
        @functools.wraps(original)
        def savefig(self, *args, **kwargs):
            self._ci_saved = True
            return original(self, *args, **kwargs)

        savefig._ci_marks = True
        figure.savefig = savefig

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "matplotlib.figure":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    if "matplotlib.figure" in sys.modules:
        patch(sys.modules["matplotlib.figure"])
    else:
        sys.meta_path.insert(0, PatchOnImport())

    def close_saved_figures(*_):
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in list(pyplot.get_fignums()):
            figure = pyplot.figure(number)
            if getattr(figure, "_ci_saved", False):
                pyplot.close(figure)

    get_ipython().events.register("post_execute", close_saved_figures)


__ci_setup()
del __ci_setup
