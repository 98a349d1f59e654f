"""A Sphinx extension for the book's HTML: each script once per page.

Jupyter Book 1 lets sphinx-thebe (and sphinx-togglebutton) add their configuration
scripts twice (once with no file name, once with an empty one), and the second
``const THEBE_JS_URL`` is a JavaScript error on every page. This drops repeated scripts
(same file, same attributes) from each page.
"""


def _key(js):
    attrs = getattr(js, "attributes", {}) or {}
    name = getattr(js, "filename", js) or ""  # None and "" are both "inline"
    return str(name), tuple(sorted((k, str(v)) for k, v in attrs.items()))


def dedupe(app, pagename, templatename, context, doctree):
    seen, out = set(), []
    for js in context.get("script_files", []):
        k = _key(js)
        if k not in seen:
            seen.add(k)
            out.append(js)
    context["script_files"] = out


def setup(app):
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
