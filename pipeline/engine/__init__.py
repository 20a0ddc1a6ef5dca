"""Ray: planning, admission, placement and the read → hash → dedup → compress → pack path."""
