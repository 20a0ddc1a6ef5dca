"""Everything that speaks to vCenter through pyvmomi."""
