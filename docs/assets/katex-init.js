// Typesets the formulas that pymdownx.arithmatex (generic mode) leaves in the page:
// \( ... \) inline in span.arithmatex, \[ ... \] displayed in div.arithmatex. KaTeX and
// its fonts are served from docs/assets/katex, so this works offline and from disk.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      renderMathInElement(element, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
    });
  }
  if (typeof document$ !== "undefined") {
    // Material for MkDocs: on every page load, instant navigation included
    document$.subscribe(function () { typeset(document); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document); });
  }
})();
