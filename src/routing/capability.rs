//! What a request needs of a deployment (tools, images, JSON answers, reasoning) against what
//! the deployment takes, and how a lack is named. Its own file because the picker skips by it,
//! the attempt log reports it and the call's error names it: none of those should import the
//! others for it.

use crate::config::Capabilities;
use crate::providers::Needs;

/// What [`missing`] names for an image by URL, which a Gemini deployment cannot take.
pub const IMAGE_URLS: &str = "image_urls";

/// What a request needs that a deployment lacking `capability` (as [`missing`] names it)
/// does not take, for messages.
pub fn lacking(capability: &str) -> &'static str {
    match capability {
        "supports_function_calling" => "tools (model_info.supports_function_calling)",
        "supports_vision" => "images (model_info.supports_vision)",
        "supports_response_schema" => "JSON answers (model_info.supports_response_schema)",
        "supports_reasoning" => "a reasoning setting (model_info.supports_reasoning)",
        _ => {
            "images by URL (Gemini does not fetch them, nor does llm-router: send the image's bytes as image.data)"
        }
    }
}

/// The first capability the request needs that a deployment lacks: its `model_info` key, or
/// [`IMAGE_URLS`].
pub fn missing(needs: Needs, has: Capabilities) -> Option<&'static str> {
    [
        (
            needs.function_calling && !has.function_calling,
            "supports_function_calling",
        ),
        (needs.vision && !has.vision, "supports_vision"),
        (
            needs.response_schema && !has.response_schema,
            "supports_response_schema",
        ),
        (needs.reasoning && !has.reasoning, "supports_reasoning"),
        (needs.image_urls && !has.image_urls, IMAGE_URLS),
    ]
    .into_iter()
    .find_map(|(lacks, key)| lacks.then_some(key))
}
