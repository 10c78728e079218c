"""``wdr-pipe browse``: a local web page to search a store by photo or by tags and see what a run says.

``answers.py`` loads (computing once, then keeping) what the page answers from; ``search.py`` answers
the page's questions; ``app.py`` is the Starlette app and its JSON API; ``server.py`` the socket and
uvicorn; ``catalog.py`` the stored images and labels; ``adapter.py`` the one module that calls the
model side; ``static/`` the page (plain HTML, CSS and JavaScript, nothing from elsewhere).

    >>> passive_openmp()                      # first, before torch or faiss is imported
    >>> answers = open_answers("store/", run="runs/wdr")
    >>> sock = bind("127.0.0.1", 8000)
    >>> serve(create_app(answers), sock)
"""
from .answers import Answers, open_answers
from .app import create_app
from .server import Background, address, bind, is_loopback, passive_openmp, serve

__all__ = ["Answers", "Background", "address", "bind", "create_app", "is_loopback", "open_answers", "passive_openmp",
           "serve"]
