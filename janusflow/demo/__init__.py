"""``janusflow demo``: a local web app over one checkpoint (Understanding and Generation tabs).

``session`` holds the model and turns form values into checked requests and results (plain
Python, testable without a browser); ``app`` lays out the Gradio page around it; ``command``
is the CLI hook. Gradio is imported only by ``app`` (``pip install 'janusflow[demo]'``).
"""
