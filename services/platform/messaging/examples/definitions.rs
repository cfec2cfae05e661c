//! Prints the comment pipeline's topology as a RabbitMQ definitions file:
//! `cargo run -p platform-messaging --example definitions > infra/rabbitmq/definitions.json`.

use platform_messaging::{AmqpSettings, Topology};

fn main() {
    let definitions = Topology::comments(&AmqpSettings::default()).definitions();
    println!(
        "{}",
        serde_json::to_string_pretty(&definitions).expect("JSON values serialize")
    );
}
