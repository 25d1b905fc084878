"""``personsearch serve``: a search page and a JSON API over one gallery index, with the model warm.

``service`` holds the model and the index and answers searches (text queries arriving together are
encoded in one batch); ``app`` is the HTTP layer (FastAPI, the optional ``[serve]`` extra); the page
is plain HTML, CSS and JavaScript in ``static/``. Nothing here is imported by the rest of the library.
"""
