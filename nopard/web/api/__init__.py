"""The npm registry API, in route groups by concern; nopard.web.app mounts them into one Klein app."""
