"""Teaching the path: trace one connection hop by hop, explain the rules, diagnose a node."""
