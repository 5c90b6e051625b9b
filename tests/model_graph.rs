//! The committed model is the architecture as trained: EfficientNet-Lite0 has ReLU6 (ONNX
//! `Clip(0, 6)`) after its stem, after every block's expansion and depthwise convolutions and
//! after its head, and no swish and no squeeze-and-excitation (Tan & Le 2019; Google's
//! efficientnet_lite_builder.py). An export that swapped in swish once cost a third of the
//! retrieval precision while matching the module it came from, so the graph is checked against
//! the definition, not against any export.
//!
//! The ONNX file is read with a few lines of protobuf decoding (ModelProto → GraphProto →
//! NodeProto), so the check needs no ONNX tooling.

use std::collections::{BTreeMap, HashMap};

/// EfficientNet-Lite0's blocks as efficientnet_lite_builder.py lists them: repeats `r`,
/// expansion ratio `e` (the other fields do not change which activations exist).
const DEFINED_BLOCKS: [&str; 7] = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
];

/// Activations a ReLU6 network must not contain (swish is Sigmoid then Mul).
const FOREIGN_OPS: [&str; 14] = [
    "Sigmoid",
    "Mul",
    "HardSigmoid",
    "HardSwish",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Tanh",
    "Mish",
];

/// (ReLU6 count, Conv count) the definition implies: stem conv + ReLU6; per block an expansion
/// conv + ReLU6 when e ≠ 1, a depthwise conv + ReLU6 and a projection conv; head conv + ReLU6.
fn defined_counts() -> (usize, usize) {
    let (mut relu6, mut conv) = (2, 2);
    for block in DEFINED_BLOCKS {
        let field = |key: char| {
            block.split('_').find_map(|part| part.strip_prefix(key)).expect("every block names r and e").to_string()
        };
        let repeats: usize = field('r').parse().expect("a repeat count");
        let expanded = field('e') != "1";
        relu6 += repeats * if expanded { 2 } else { 1 };
        conv += repeats * if expanded { 3 } else { 2 };
    }
    (relu6, conv)
}

#[test]
fn the_definition_implies_33_relu6_and_49_convolutions() {
    // 16 blocks: the first unexpanded (1 ReLU6), 15 expanded (2 each), plus stem and head.
    assert_eq!(defined_counts(), (33, 49));
}

#[test]
fn the_committed_model_has_the_architectures_activations() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model/efficientnet-lite0.onnx");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let graph = Graph::parse(&bytes).expect("the committed model is a readable ONNX ModelProto");
    let (relu6, conv) = defined_counts();
    assert_eq!(graph.check(relu6, conv), Ok(()), "op counts: {:?}", graph.op_counts());
    assert_eq!(graph.inputs, vec!["images".to_string()]);
    assert_eq!(graph.outputs, vec!["embeddings".to_string()]);
}

#[test]
fn the_check_refuses_a_swish_graph_and_a_clip_that_is_not_relu6() {
    // Swish in place of one ReLU6: Sigmoid then Mul.
    let swish = model(&[
        node("Conv", &["images", "w"], &["a"]),
        node("Sigmoid", &["a"], &["s"]),
        node("Mul", &["a", "s"], &["embeddings"]),
    ]);
    let graph = Graph::parse(&swish).expect("parses");
    let error = graph.check(0, 1).expect_err("swish must be refused");
    assert!(error.contains("Mul") && error.contains("Sigmoid"), "{error}");

    // Clip(0, 1) is not ReLU6, whatever the count.
    let clip = model(&[
        constant("lo", 0.0),
        constant("hi", 1.0),
        node("Conv", &["images", "w"], &["a"]),
        node("Clip", &["a", "lo", "hi"], &["embeddings"]),
    ]);
    let error = Graph::parse(&clip).expect("parses").check(1, 1).expect_err("Clip(0, 1) must be refused");
    assert!(error.contains("[0.0, 1.0]"), "{error}");

    // The right activation but one too few.
    let short = model(&[
        constant("lo", 0.0),
        constant("hi", 6.0),
        node("Conv", &["images", "w"], &["a"]),
        node("Clip", &["a", "lo", "hi"], &["embeddings"]),
    ]);
    let graph = Graph::parse(&short).expect("parses");
    assert_eq!(graph.check(1, 1), Ok(()));
    assert!(graph.check(2, 1).expect_err("a missing ReLU6 must be refused").contains("Clip"));
}

// ---------------------------------------------------------------------------------------------
// Just enough protobuf to read op types, node inputs and scalar constants out of an ONNX file.

struct Node {
    op_type: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// The `value` of a Constant node, when it is a float scalar.
    scalar: Option<f32>,
}

struct Graph {
    nodes: Vec<Node>,
    /// Float scalars among the initializers, by name.
    initializers: HashMap<String, f32>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Graph {
    fn parse(model: &[u8]) -> Result<Self, String> {
        // ModelProto.graph = 7
        let graph = fields(model)?.into_iter().find(|(n, _)| *n == 7).ok_or("no graph in the model")?.1;
        let graph = graph.bytes()?;
        let mut parsed =
            Graph { nodes: Vec::new(), initializers: HashMap::new(), inputs: Vec::new(), outputs: Vec::new() };
        // GraphProto: node = 1, initializer = 5, input = 11, output = 12 (ValueInfoProto.name = 1)
        for (number, value) in fields(graph)? {
            match number {
                1 => parsed.nodes.push(parse_node(value.bytes()?)?),
                5 => {
                    let (name, scalar) = parse_tensor(value.bytes()?)?;
                    if let Some(scalar) = scalar {
                        parsed.initializers.insert(name, scalar);
                    }
                }
                11 | 12 => {
                    let name = fields(value.bytes()?)?
                        .into_iter()
                        .find(|(n, _)| *n == 1)
                        .map(|(_, v)| v.string())
                        .transpose()?
                        .unwrap_or_default();
                    // Initializers may be listed as inputs in older IR versions; real inputs are not initialised.
                    if number == 11 { parsed.inputs.push(name) } else { parsed.outputs.push(name) }
                }
                _ => {}
            }
        }
        let initialised: Vec<String> = parsed.initializers.keys().cloned().collect();
        parsed.inputs.retain(|name| !initialised.contains(name));
        Ok(parsed)
    }

    fn op_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.op_type.as_str()).or_default() += 1;
        }
        counts
    }

    /// Exactly `relu6` Clip nodes, each bounded to [0, 6], exactly `conv` Conv nodes, and none
    /// of the foreign activations.
    fn check(&self, relu6: usize, conv: usize) -> Result<(), String> {
        let counts = self.op_counts();
        let foreign: Vec<&str> = FOREIGN_OPS.iter().copied().filter(|op| counts.contains_key(op)).collect();
        if !foreign.is_empty() {
            return Err(format!("foreign activations {foreign:?} in a ReLU6 network: {counts:?}"));
        }
        let scalar = |name: &str| {
            self.initializers.get(name).copied().or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| n.op_type == "Constant" && n.outputs.first().is_some_and(|o| o == name))?
                    .scalar
            })
        };
        for clip in self.nodes.iter().filter(|n| n.op_type == "Clip") {
            let bounds: Vec<Option<f32>> = clip.inputs.iter().skip(1).map(|name| scalar(name)).collect();
            if bounds != [Some(0.0), Some(6.0)] {
                let shown: Vec<String> = bounds.iter().map(|b| b.map_or("?".into(), |v| format!("{v:.1}"))).collect();
                return Err(format!("a Clip bounded to [{}], not ReLU6's [0, 6]", shown.join(", ")));
            }
        }
        let clips = counts.get("Clip").copied().unwrap_or(0);
        let convs = counts.get("Conv").copied().unwrap_or(0);
        if (clips, convs) != (relu6, conv) {
            return Err(format!("{clips} Clip and {convs} Conv, the definition needs {relu6} and {conv}: {counts:?}"));
        }
        Ok(())
    }
}

fn parse_node(bytes: &[u8]) -> Result<Node, String> {
    // NodeProto: input = 1, output = 2, op_type = 4, attribute = 5
    let mut node = Node { op_type: String::new(), inputs: Vec::new(), outputs: Vec::new(), scalar: None };
    for (number, value) in fields(bytes)? {
        match number {
            1 => node.inputs.push(value.string()?),
            2 => node.outputs.push(value.string()?),
            4 => node.op_type = value.string()?,
            // AttributeProto.t = 5 (a tensor), as a Constant node's `value` is.
            5 => {
                for (attribute_field, attribute_value) in fields(value.bytes()?)? {
                    if attribute_field == 5 {
                        node.scalar = parse_tensor(attribute_value.bytes()?)?.1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

/// A TensorProto's name and, if it holds one float, that float.
fn parse_tensor(bytes: &[u8]) -> Result<(String, Option<f32>), String> {
    // TensorProto: data_type = 2 (1 = FLOAT), float_data = 4, name = 8, raw_data = 9
    let (mut name, mut data_type, mut floats) = (String::new(), 0, Vec::new());
    for (number, value) in fields(bytes)? {
        match (number, value) {
            (2, Value::Varint(v)) => data_type = v,
            (4, Value::Bytes(packed)) => floats.extend(packed.chunks_exact(4).map(le_f32)),
            (4, Value::Fixed32(v)) => floats.push(f32::from_bits(v)),
            (8, value) => name = value.string()?,
            (9, Value::Bytes(raw)) if raw.len() % 4 == 0 => floats.extend(raw.chunks_exact(4).map(le_f32)),
            _ => {}
        }
    }
    Ok((name, (data_type == 1 && floats.len() == 1).then(|| floats[0])))
}

fn le_f32(chunk: &[u8]) -> f32 {
    f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    fn bytes(&self) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(bytes) => Ok(bytes),
            _ => Err("expected a length-delimited field".into()),
        }
    }

    fn string(&self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }
}

/// The top-level fields of one protobuf message, in order.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut bytes)?),
            1 => {
                bytes = bytes.get(8..).ok_or("truncated 64-bit field")?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|e| e.to_string())?;
                let (value, rest) = (bytes.get(..len).ok_or("truncated field")?, &bytes[len..]);
                bytes = rest;
                Value::Bytes(value)
            }
            5 => {
                let raw = bytes.get(..4).ok_or("truncated 32-bit field")?;
                bytes = &bytes[4..];
                Value::Fixed32(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 64 bits".into())
}

// Writing the same subset, for the hand-made graphs that prove the check can fail.

fn field_bytes(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_varint(number << 3 | 2);
    out.extend(encode_varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

fn encode_varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn node(op_type: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
    let mut node = Vec::new();
    for input in inputs {
        node.extend(field_bytes(1, input.as_bytes()));
    }
    for output in outputs {
        node.extend(field_bytes(2, output.as_bytes()));
    }
    node.extend(field_bytes(4, op_type.as_bytes()));
    node
}

/// A Constant node whose `value` is one float.
fn constant(output: &str, value: f32) -> Vec<u8> {
    let mut tensor = encode_varint(2 << 3); // data_type = FLOAT
    tensor.extend(encode_varint(1));
    tensor.extend(field_bytes(9, &value.to_le_bytes()));
    let mut attribute = field_bytes(1, b"value");
    attribute.extend(field_bytes(5, &tensor));
    let mut constant = node("Constant", &[], &[output]);
    constant.extend(field_bytes(5, &attribute));
    constant
}

fn model(nodes: &[Vec<u8>]) -> Vec<u8> {
    let mut graph = Vec::new();
    for node in nodes {
        graph.extend(field_bytes(1, node));
    }
    field_bytes(7, &graph)
}
