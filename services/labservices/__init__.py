"""labservices: the lab's sample Thrift service (IDL, threaded server, client helpers)."""
