"""The hf-grasp Space: merge fine-tuned image classifiers with GRASP, in the browser.

The page lives in the installed package (``hf_grasp.space``), so this file, the
``hf-grasp space`` command and the tests all run the same app. On a Space,
gradio serves on the address the Space sets (``GRADIO_SERVER_NAME``).
"""

from hf_grasp.space import launch

if __name__ == "__main__":
    launch()
