from gpufleet.dicts import deep_merge


def test_nested_dicts_merge_key_by_key_and_inputs_stay_unchanged():
    base = {"metadata": {"labels": {"a": "1"}, "annotations": {"x": "y"}}, "spec": {"taints": [1]}}
    override = {"metadata": {"labels": {"b": "2"}}, "spec": {"taints": [2]}}
    merged = deep_merge(base, override)
    assert merged == {"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}},
                      "spec": {"taints": [2]}}
    merged["metadata"]["annotations"]["x"] = "changed"
    assert base["metadata"]["annotations"] == {"x": "y"}
    assert override == {"metadata": {"labels": {"b": "2"}}, "spec": {"taints": [2]}}


def test_a_scalar_replaces_a_dict_and_the_reverse():
    assert deep_merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}
    assert deep_merge({"a": 3}, {"a": {"b": 1}}) == {"a": {"b": 1}}
