"""What both environment sides share (torch helpers and the step loop). Imported by `parity.origin` and
`parity.port`, never by the host; it imports neither of them, so the two runtimes never import each other."""
