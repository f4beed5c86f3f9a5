"""The hf-grasp Space: merge fine-tuned image classifiers with GRASP, in the browser.

The page lives in the package (``hf_grasp.apps.space``), so this file, the
``hf-grasp space`` command and the tests all run the same app. In a folder
written by ``hf-grasp space --export``, the package sits beside this file
(Python puts this file's folder first on ``sys.path``). On a Space, gradio
serves on the address the Space sets (``GRADIO_SERVER_NAME``). The page is
public there: it takes Hub ids and the built-in benchmarks only, never paths on
the Space's disk (``launch``'s ``allow_local_paths`` stays off).
"""

from hf_grasp.apps.space import launch

if __name__ == "__main__":
    launch()
