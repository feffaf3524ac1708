"""The parameters each Graph endpoint of the Meta stand-in accepts: the `param_types` of the
facebook-business SDK (v26.0.3; `Page.create_feed`, `Page.create_photo`, `IGUser.create_media`,
`IGUser.create_media_publish`, `IGUser.get_content_publishing_limit`, ...), plus the parameters
Graph takes on every call. Anything else is refused with code 100, as Graph does.

Copied rather than imported: the sandbox runs without the SDK (a dev dependency).
tests/test_meta_contract.py checks these sets against the installed SDK's, name for name.

The fields each object serves are the SDK's field names too (`Page.Field`, `PagePost.Field`,
`Photo.Field`, `IGUser.Field`, `IGMedia.Field`, `ShadowIGMediaBuilder.Field` (the IG container),
`ContentPublishingLimitResponse.Field`); the stand-in serves only the few it models, and the
contract test checks each of those is a real one.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Every Graph call: the token (also as a header), the app secret proof, fields, output flags.
UNIVERSAL = _names("access_token appsecret_proof fields format locale method pretty")
# Reading an edge: Graph's cursor- and time-based paging, and `summary` (the SDK's Cursor
# always asks for it).
PAGING = _names("limit after before since until summary")

PAGE_FEED_POST = _names(
    """
    actions album_id android_key_hash application_id asked_fun_fact_prompt_id asset3d_id
    associated_id attach_place_suggestion attached_media audience_exp backdated_time
    backdated_time_granularity breaking_news breaking_news_expiration call_to_action caption
    child_attachments client_mutation_id composer_entry_picker composer_entry_point
    composer_entry_time composer_session_events_log composer_session_id composer_source_surface
    composer_type connection_class content_attachment coordinates cta_link cta_type description
    direct_share_status enforce_link_ownership expanded_height expanded_width feed_targeting
    formatting fun_fact_prompt_id fun_fact_toastee_id height home_checkin_city_id image_crops
    implicit_with_tags instant_game_entry_point_data ios_bundle_id is_backout_draft
    is_boost_intended is_explicit_location is_explicit_share is_group_linking_post
    is_photo_container link location_source_id manual_privacy message multi_share_end_card
    multi_share_optimized name nectar_module object_attachment og_action_type_id
    og_hide_object_attachment og_icon_id og_object_id og_phrase og_set_profile_badge
    og_suggestion_mechanism page_recommendation picture place place_attachment_setting
    place_list place_list_data post_surfaces_blacklist posting_to_redspace privacy prompt_id
    prompt_tracking_string properties proxied_app_id publish_event_id published quote ref
    referenceable_image_ids referral_id scheduled_publish_time source sponsor_id
    sponsor_relationship suggested_place_id tags target_surface targeting text_format_metadata
    text_format_preset_id text_only_place thumbnail time_since_original_post title
    tracking_info unpublished_content_type user_selected_tags video_start_time_ms
    viewer_coordinates width
    """
)
PAGE_PHOTOS_POST = _names(
    """
    aid allow_spherical_photo alt_text_custom android_key_hash application_id attempt
    audience_exp backdated_time backdated_time_granularity caption composer_entry_point
    composer_session_id direct_share_status feed_targeting filter_type full_res_is_coming_later
    initial_view_heading_override_degrees initial_view_pitch_override_degrees
    initial_view_vertical_fov_override_degrees ios_bundle_id is_explicit_location
    is_explicit_place location_source_id manual_privacy message name nectar_module no_story
    offline_id og_action_type_id og_icon_id og_object_id og_phrase og_set_profile_badge
    og_suggestion_mechanism parent_media_id place privacy profile_id proxied_app_id published qn
    scheduled_publish_time spherical_metadata sponsor_id sponsor_relationship tags target_id
    targeting temporary time_since_original_post uid unpublished_content_type url
    user_selected_tags vault_image_id
    """
)
PAGE_FEED_GET = _names("include_hidden limit show_expired with")
PAGE_PHOTOS_GET = _names("biz_tag_id business_id type")
PAGE_GET = _names("account_linking_token")
IG_MEDIA_POST = _names(
    """
    alt_text audio_configuration audio_name branded_content_sponsor_ids caption children
    collaborators cover_url cross_post_to_threads image_url is_ai_generated is_carousel_item
    is_comment_prompt_used is_paid_partnership is_poll_duration_extended location_id media_type
    poll_attachment product_tags share_to_feed show_ig_link thumb_offset title trial_params
    upload_type user_tags video_url
    """
)
IG_MEDIA_PUBLISH_POST = _names("creation_id")
IG_MEDIA_GET = _names("since until")
IG_PUBLISHING_LIMIT_GET = _names("since")
IG_USER_GET = _names("adgroup_id")
IG_CONTAINER_GET: frozenset[str] = frozenset()
POST_GET = _names("primary_fb_page_id primary_ig_user_id")
PHOTO_GET: frozenset[str] = frozenset()
IG_MEDIA_NODE_GET = _names(
    """
    ad_account_id boostable_media_callsite business_id primary_fb_page_id primary_ig_user_id
    secondary_fb_page_id secondary_ig_user_id
    """
)

# (method, what the path names) -> the endpoint's own parameters, and whether it is an edge read.
ENDPOINTS: dict[tuple[str, str], tuple[frozenset[str], bool]] = {
    ("POST", "page/feed"): (PAGE_FEED_POST, False),
    ("POST", "page/photos"): (PAGE_PHOTOS_POST, False),
    ("GET", "page/feed"): (PAGE_FEED_GET, True),
    ("GET", "page/photos"): (PAGE_PHOTOS_GET, True),
    ("GET", "page"): (PAGE_GET, False),
    ("POST", "ig_user/media"): (IG_MEDIA_POST, False),
    ("POST", "ig_user/media_publish"): (IG_MEDIA_PUBLISH_POST, False),
    ("GET", "ig_user/media"): (IG_MEDIA_GET, True),
    ("GET", "ig_user/content_publishing_limit"): (IG_PUBLISHING_LIMIT_GET, True),
    ("GET", "ig_user"): (IG_USER_GET, False),
    ("GET", "container"): (IG_CONTAINER_GET, False),
    ("GET", "post"): (POST_GET, False),
    ("GET", "photo"): (PHOTO_GET, False),
    ("GET", "media"): (IG_MEDIA_NODE_GET, False),
}


def accepted(method: str, endpoint: str) -> frozenset[str]:
    own, edge = ENDPOINTS[(method, endpoint)]
    return own | UNIVERSAL | (PAGING if edge else frozenset())


# Fields each object serves (all of them real fields of the SDK's class for that object).
SERVED_FIELDS: dict[str, tuple[str, ...]] = {
    "page": ("id", "name"),
    "post": ("id", "message", "created_time", "permalink_url"),
    "photo": ("id", "name", "created_time", "page_story_id", "link"),
    "ig_user": ("id", "username", "name"),
    "container": ("id", "status_code", "status"),
    "media": ("id", "caption", "timestamp", "permalink", "media_type", "shortcode"),
    "content_publishing_limit": ("quota_usage", "config"),
}
# What Graph answers when `fields` is not given.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "page": ("id", "name"),
    "post": ("id", "message", "created_time"),
    "photo": ("id", "created_time"),
    "ig_user": ("id",),
    "container": ("id",),
    "media": ("id",),
    "content_publishing_limit": ("quota_usage",),
}
