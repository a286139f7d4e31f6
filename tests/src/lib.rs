//! Integration-test helpers: network namespaces and a netmon child process.
