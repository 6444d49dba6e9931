//! The HTML view of a document: the AsyncAPI project's own viewer
//! (`@asyncapi/react-component`'s standalone bundle, vendored by
//! `scripts/vendor-asyncapi-viewer.sh` into `runtime/assets/asyncapi-react`) with the document
//! inlined, so the page works as a static file and needs no network.

use super::document::AsyncApi;

/// The version of `@asyncapi/react-component` the HTML view embeds.
pub const VIEWER_VERSION: &str = "3.2.1";

const SCRIPT: &str = include_str!("../../assets/asyncapi-react/standalone.js");
const STYLE: &str = include_str!("../../assets/asyncapi-react/default.min.css");

impl AsyncApi {
    /// The document as a self-contained HTML page (about 3 MB: the viewer is inlined), to
    /// serve from the App's HTTP side or to write as a static file.
    ///
    /// ```
    /// use brook_runtime::{App, MemoryBroker};
    /// let html = App::new(MemoryBroker::new()).asyncapi().title("billing").to_html();
    /// assert!(html.starts_with("<!DOCTYPE html>"));
    /// assert!(html.contains("<title>billing</title>"));
    /// ```
    pub fn to_html(&self) -> String {
        let doc = self.to_value();
        let title = doc["info"]["title"]
            .as_str()
            .unwrap_or("AsyncAPI")
            .to_owned();
        // Inside <script>, `</script` or `<!--` in a string would end or change the element:
        // `<` only occurs in JSON strings, where `\u003c` means the same.
        let schema = doc.to_string().replace('<', "\\u003c");
        let mut page = String::with_capacity(SCRIPT.len() + STYLE.len() + schema.len() + 1024);
        page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        page.push_str(&format!(
            "<title>{}</title>\n<style>\n",
            escape_html(&title)
        ));
        page.push_str(STYLE);
        page.push_str("\n</style>\n</head>\n<body>\n<div id=\"asyncapi\"></div>\n<script>\n");
        page.push_str(SCRIPT);
        page.push_str("\n</script>\n<script>\nAsyncApiStandalone.render({ schema: ");
        page.push_str(&schema);
        page.push_str(
            ", config: { show: { sidebar: true, errors: true } } }, document.getElementById(\"asyncapi\"));\n</script>\n</body>\n</html>\n",
        );
        page
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
