//! Prints the messages a peer would receive: binds a temporary queue to an
//! exchange with a routing key and shows each message with its properties.
//!
//! `cargo run -p outbox --example tail -- gigconnect-order-exchange order-email`
//! (`AMQP_URI` overrides `amqp://guest:guest@127.0.0.1:5672/%2f`).

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(exchange), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: tail EXCHANGE ROUTING_KEY");
        std::process::exit(2);
    };
    let uri = std::env::var("AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("listening on {exchange} / {key}");
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "tail".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let p = &delivery.properties;
        println!(
            "message_id={} correlation_id={} {}",
            p.message_id().as_ref().map(|s| s.as_str()).unwrap_or("-"),
            p.correlation_id()
                .as_ref()
                .map(|s| s.as_str())
                .unwrap_or("-"),
            String::from_utf8_lossy(&delivery.data)
        );
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
