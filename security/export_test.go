package security

// The dev CA's own rotation is not public API (a service author's tests
// rotate through SPIRE or Consul); these let the black-box tests drive it.
var (
	RotateCA   = (*DevCA).rotateCA
	DropOldCAs = (*DevCA).dropOldCAs
	Bundle     = (*DevCA).currentBundle
	Issue      = (*DevCA).issue
)
