// Submits the form of the form-post page as soon as the page is parsed (the script is loaded
// with `defer`). Without scripts the page shows a "Continue" button that does the same.
// HTMLFormElement.prototype.submit is called directly because a field named "submit" would
// hide the form's own method.
(function () {
  "use strict";
  var form = document.getElementById("form-post");
  if (form) {
    HTMLFormElement.prototype.submit.call(form);
  }
})();
