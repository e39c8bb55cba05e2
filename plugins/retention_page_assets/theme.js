(function () {
  var root = document.documentElement;
  function uiTheme() {
    try {
      var ui = window.parent !== window && window.parent.document.documentElement;
      if (ui && ui.classList.contains("dark")) return "dark";
      if (ui && ui.classList.contains("light")) return "light";
    } catch (e) { /* not in the UI's frame, or another origin */ }
    try {
      var stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) { /* storage blocked */ }
    return null;  /* "system": prefers-color-scheme (the style sheet) decides */
  }
  function apply() {
    var theme = uiTheme();
    root.classList.remove("dark", "light");
    if (theme) root.classList.add(theme);
    root.setAttribute("data-theme", theme || "system");
  }
  apply();
  window.addEventListener("storage", function (e) { if (e.key === "theme") apply(); });
  try {
    if (window.parent !== window) {
      new MutationObserver(apply).observe(window.parent.document.documentElement,
                                          {attributes: true, attributeFilter: ["class"]});
    }
  } catch (e) { /* another origin */ }
})();
