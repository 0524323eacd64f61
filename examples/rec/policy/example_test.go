package policy_test

import (
	"fmt"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

func ExampleAllowed() {
	// Only settlement may transfer ownership; the gateway may read holdings.
	fmt.Println(policy.Allowed(policy.Settlement, recpb.Registry_Transfer_FullMethodName))
	fmt.Println(policy.Allowed(policy.Gateway, recpb.Registry_Transfer_FullMethodName))
	fmt.Println(policy.Allowed(policy.Gateway, recpb.Registry_Holdings_FullMethodName))
	// Output:
	// true
	// false
	// true
}
