package resilience

// SetFastPath turns the first-attempt fast path of c on (the default) or
// off, so that tests can run the same calls through both paths.
func SetFastPath(c *Client, on bool) { c.noFastPath = !on }
