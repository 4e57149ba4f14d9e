//! `network create` and `network delete`: edits of networks.yaml.
