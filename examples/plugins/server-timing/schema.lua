return {
  fields = {},
}
