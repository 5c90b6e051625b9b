//! Near-duplicates: of one indexed image, and the report of near-duplicate pairs across a
//! collection, a page of images at a time.

use futures::StreamExt;

use super::{QueryImage, Result, SearchRequest, SearchService};
use crate::catalog::{ImageRecord, ImageStatus, ListFilter};
use crate::store::{Hit, SearchFilter};

/// How close two images must be to count as near-duplicates when a request does not say
/// (cosine distance). With the built-in model, photos re-saved at JPEG quality 50 land at
/// 0.014 (median) to 0.099 (worst) of their original; halved, cropped by 10 % or mirrored
/// copies at 0.09–0.16 (median) and up to 0.45, while the closest two distinct photos of the
/// sample sit 0.159 apart. So 0.1 finds re-saved copies without false pairs; raise it toward 0.3
/// to catch resized and cropped copies, at the price of similar-looking distinct images.
pub const DEFAULT_DUPLICATE_DISTANCE: f32 = 0.1;
/// Matches the duplicates report looks at per image.
pub const REPORT_MATCHES_PER_IMAGE: usize = 10;
/// Report searches in flight at once: enough to overlap Milvus round trips, few enough to
/// leave the server to other clients.
const REPORT_SEARCHES_AT_ONCE: usize = 4;

/// Near-duplicates of one indexed image.
#[derive(Debug)]
pub struct ImageDuplicates {
    pub image: ImageRecord,
    /// Images of its collection within the distance, closest first.
    pub duplicates: Vec<Hit>,
    /// As many were found as were asked for: there may be more.
    pub truncated: bool,
}

/// One image of a report page and its near-duplicates with a higher id.
#[derive(Debug)]
pub struct DuplicateGroup {
    pub id: i64,
    pub uri: String,
    /// Closest first; at most [`REPORT_MATCHES_PER_IMAGE`].
    pub duplicates: Vec<Hit>,
    /// [`REPORT_MATCHES_PER_IMAGE`] were found within the distance: there may be more.
    pub truncated: bool,
}

/// One page of the duplicates report.
#[derive(Debug)]
pub struct DuplicatesPage {
    /// Images of the page that have a vector (an image catalogued without one, from an
    /// interrupted ingest, is skipped, not failed on).
    pub examined: usize,
    /// The examined images with at least one near-duplicate.
    pub groups: Vec<DuplicateGroup>,
    /// The page was full: the next one starts after this id.
    pub next_after: Option<i64>,
}

impl SearchService {
    /// Everything within `max_distance` of an indexed image, at most `limit`.
    pub async fn duplicates_of(&self, id: i64, max_distance: f32, limit: usize) -> Result<ImageDuplicates> {
        let query = QueryImage::Stored { id };
        let request = SearchRequest { query, top_k: limit, max_distance: Some(max_distance), uri_prefix: None };
        let found = self.search(request).await?;
        let image = found.stored_query.ok_or_else(|| super::SearchError::Internal("no query image".into()))?;
        let duplicates = found.hits;
        Ok(ImageDuplicates { truncated: duplicates.len() == limit, image, duplicates })
    }

    /// A page of the duplicates report: `limit` indexed images of the collection after id
    /// `after`, each with its near-duplicates among the images after it (a higher id), so every
    /// pair is reported once, from its lower id, however many closer matches the higher one has
    /// among lower ids.
    pub async fn duplicates_page(
        &self,
        collection: &str,
        max_distance: f32,
        after: i64,
        limit: u32,
    ) -> Result<DuplicatesPage> {
        self.require_collection(collection).await?;
        let filter = ListFilter { status: Some(ImageStatus::Indexed), uri_prefix: None };
        let page = self.list_images(collection, &filter, after, limit).await?;
        let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
        let mut vectors = self.vectors(collection, &ids).await?;
        let examined: Vec<(i64, String, Vec<f32>)> = page
            .iter()
            .filter_map(|record| vectors.remove(&record.id).map(|vector| (record.id, record.uri.clone(), vector)))
            .collect();
        let examined_count = examined.len();
        // Futures made first, each owning its image, then run a few at a time.
        let searches: Vec<_> = examined
            .into_iter()
            .map(|(id, uri, vector)| async move {
                let filter = SearchFilter { min_id: Some(id + 1), ..SearchFilter::default() };
                let hits = self.search_by_vector(collection, vector, REPORT_MATCHES_PER_IMAGE, &filter).await?;
                let truncated =
                    hits.len() == REPORT_MATCHES_PER_IMAGE && hits.iter().all(|hit| hit.distance() <= max_distance);
                let duplicates: Vec<Hit> = hits.into_iter().filter(|hit| hit.distance() <= max_distance).collect();
                Ok((!duplicates.is_empty()).then_some(DuplicateGroup { id, uri, duplicates, truncated }))
            })
            .collect();
        let groups: Vec<Option<DuplicateGroup>> = futures::stream::iter(searches)
            .buffered(REPORT_SEARCHES_AT_ONCE)
            .collect::<Vec<Result<_>>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let next_after = (page.len() == limit as usize).then(|| page.last().map(|r| r.id)).flatten();
        Ok(DuplicatesPage { examined: examined_count, groups: groups.into_iter().flatten().collect(), next_after })
    }
}
