"""The command-line tools. Run one as `python tools/NAME.py` in the repository, or as
`python -m resnet_detect NAME` (`resnet-detect NAME`) where the project is installed with pip:
the wheel carries them as resnet_detect.tools (resnet_detect/__main__.py)."""
