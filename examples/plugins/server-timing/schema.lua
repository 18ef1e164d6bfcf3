return {
  fields = {},
  fault_tolerant = true, -- adds a header only; a failure here never blocks a request
}
